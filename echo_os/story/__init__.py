"""Story production, input side: the bible, the storyboard, prompt composition, seeds, the plan.

    plan = plan_story("Lighthouse Keeper", "prompts/lighthouse-keeper/story.csv")
    plan.requests  # validated RenderRequests in scene order

See docs/story.md for the file formats, the composition order, the seed policy and the limits.
"""

from echo_os.story.bible import Bible, load_bible
from echo_os.story.compose import COMPOSITION_ORDER, ComposedPrompt, compose_scene_prompt
from echo_os.story.plan import (
    CastMember,
    PlannedScene,
    PlanOptions,
    SeedChoice,
    StoryPlan,
    TokenCounts,
    choose_seed,
    find_bible,
    plan_prompt_list,
    plan_story,
)
from echo_os.story.problems import Problem, StoryError
from echo_os.story.slug import slugify
from echo_os.story.storyboard import SceneRow, read_storyboard
from echo_os.story.tokens import CLIP_TEXT_TOKENS, clip_token_count, load_clip_tokenizer

__all__ = [
    "Bible", "CLIP_TEXT_TOKENS", "COMPOSITION_ORDER", "CastMember", "ComposedPrompt", "PlanOptions",
    "PlannedScene", "Problem", "SceneRow", "SeedChoice", "StoryError", "StoryPlan", "TokenCounts",
    "choose_seed", "clip_token_count", "compose_scene_prompt", "find_bible", "load_bible",
    "load_clip_tokenizer", "plan_prompt_list", "plan_story", "read_storyboard", "slugify",
]
