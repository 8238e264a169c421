"""What an animatic or a clip will be, checked before any work is queued: the checks `echo-os animatic` and
`echo-os animate` make first, for a host that queues the work and renders it later (POST /api/animatic,
POST /api/animate). Problems are OptionErrors naming the option at fault (`size`, `artifact`, `model`, ...
as echo_os.motion names them); the host shows them as it shows its options' errors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from echo_os.errors import OptionError, UsageError

if TYPE_CHECKING:
    from echo_os.artifacts.store import Artifact
    from echo_os.motion.animatic import AnimaticOptions, AnimaticPlan
    from echo_os.render.requests import ClipRequest, RenderRequest
    from echo_os.settings import Settings


def plan_animatic(settings: Settings, project: str, options: AnimaticOptions) -> AnimaticPlan:
    """The project's newest rendered story checked for an animatic with `options` (scenes, their images,
    durations, the fade fit), and a `size` a video may have. Raises OptionError("size") for the size, else
    what echo_os.motion.animatic.check_animatic raises."""
    from echo_os.artifacts.encode import check_video_size
    from echo_os.motion.animatic import check_animatic

    if options.size is not None:
        try:
            check_video_size(*options.size, what="size")
        except UsageError as error:
            raise OptionError(str(error), "size") from None
    return check_animatic(settings, project, options)


def plan_clip(settings: Settings, parent: Artifact, clip: ClipRequest) -> RenderRequest:
    """The RenderRequest of a clip from the image artifact `parent` (echo_os.motion.clips), with the engine
    that will render it chosen and its runtime checked. OptionError names the option: `artifact` (a video,
    not an image), a clip option (`frames`, `motion-bucket`, ...), or `model` (no video engine renders it)."""
    from echo_os.engines import check_runtime, choose_engine
    from echo_os.motion.clips import clip_render_request

    if getattr(parent.meta, "kind", None) == "video":
        raise OptionError(f"artifact {parent.id[:12]} is a video; a clip starts from an image artifact", "artifact")
    try:
        request = clip_render_request(settings, parent, clip)
    except OptionError:
        raise
    except UsageError as error:  # not an image
        raise OptionError(str(error), "artifact") from None
    try:  # a model no video engine renders (not a video entry, no weights here)
        choose_engine(settings, request)
        check_runtime(settings, request)
    except OptionError:
        raise
    except UsageError as error:
        raise OptionError(str(error), "model") from None
    return request
