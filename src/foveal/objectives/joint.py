"""train.objective = joint: caption + train.recon_weight x recon (0.5 in the reference); its ratio is read on recon."""

from foveal.objectives.base import OBJECTIVES, Objective


@OBJECTIVES.register("joint")
class Joint(Objective):
    kinds = ("recon", "caption")

    def pass_loss(self, s, t):
        return s.caption_loss + t.recon_weight * s.recon_loss
