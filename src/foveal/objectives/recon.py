"""train.objective = recon: predict the next frame's target."""

from foveal.objectives.base import OBJECTIVES, Objective


@OBJECTIVES.register("recon")
class Recon(Objective):
    kinds = ("recon",)

    def pass_loss(self, s, t):
        return s.recon_loss
