"""train.objective = caption: caption cross-entropy after the frame tokens."""

from foveal.objectives.base import OBJECTIVES, Objective


@OBJECTIVES.register("caption")
class Caption(Objective):
    kinds = ("caption",)

    def pass_loss(self, s, t):
        return s.caption_loss
