"""The built-in wildcard vocabulary of the offline planner, written for echo-os.

Each list is a Dynamic Prompts wildcard (`__subject__`, `__palette__`, ...). A file of the same name in
the workspace's prompts/wildcards/ (one value per line, e.g. prompts/wildcards/palette.txt) replaces a
list; other files add wildcards of their own. The entries avoid people on purpose: the intent says who
is in the picture, the vocabulary varies everything around it.
"""

from __future__ import annotations

VOCABULARY: dict[str, list[str]] = {
    "subject": [
        "a spiral of nested shells", "a branching crystal lattice", "an ancient stone archway", "a coral reef",
        "a lone tree on a hill", "a lighthouse on a cliff", "a koi pond", "a desert canyon", "a glacier cave",
        "a field of sunflowers", "a mountain lake at the tree line", "a rusted steam locomotive",
        "an orchard in blossom", "a fox in fresh snow", "an owl on a fence post", "a whale breaching",
        "a hummingbird at a flower", "a stack of old books", "a brass telescope", "a paper lantern festival",
        "a greenhouse full of ferns", "a waterfall in a jungle", "a volcanic black sand beach",
        "a moth on tree bark", "a jellyfish bloom", "a wind-bent cypress", "a salt flat after rain",
        "a mossy forest stream", "a city skyline at dusk", "a harbour full of sailboats",
        "a cathedral rose window", "a mechanical clockwork heart", "a nebula over a ringed planet",
        "a bonsai on a stone table", "a tide pool with starfish", "a hot air balloon over hills",
        "a frozen waterfall", "a lotus on still water", "a sand dune ridge", "a flock of starlings",
    ],
    "palette": [
        "warm amber and burnt orange", "teal and coral", "deep indigo and gold", "muted sage and cream",
        "monochrome charcoal", "pastel pink and mint", "crimson and black", "ochre and terracotta",
        "electric violet and cyan", "sepia tones", "emerald and copper", "ice blue and silver",
        "sunset magenta and peach", "forest green and rust", "ivory and soft grey",
        "neon green on black", "cobalt and saffron", "dusty rose and olive",
    ],
    "composition": [
        "centered symmetrical composition", "rule of thirds", "extreme close-up", "wide establishing shot",
        "bird's-eye view", "low angle looking up", "diagonal leading lines", "minimalist negative space",
        "framed through an archway", "overhead flat lay", "panoramic vista", "tight crop on texture",
        "layered foreground and background", "silhouette against the sky", "dutch angle", "isometric view",
    ],
    "lens": [
        "35mm lens", "85mm portrait lens", "14mm ultra-wide lens", "macro lens", "tilt-shift lens",
        "fisheye lens", "200mm telephoto lens", "50mm lens at f/1.8", "anamorphic lens", "pinhole camera",
    ],
    "lighting": [
        "golden hour light", "soft overcast light", "dramatic chiaroscuro", "neon glow", "moonlight",
        "volumetric god rays", "rim lighting", "candlelight", "bioluminescent glow", "harsh midday sun",
        "blue hour twilight", "studio softbox lighting", "backlit haze", "stormy light breaking through clouds",
        "firelight", "aurora light",
    ],
}

# The variation template of the offline planner: the intent's theme comes first (it is what the user
# asked for), then one value from each list. Parts are separated by PART so a storyboard can put them in
# their own columns; a prompt joins them with ", ".
PART = "\u241e"
DEFAULT_TEMPLATE = PART.join(["__subject__", "__palette__", "__composition__, __lens__", "__lighting__"])
PART_NAMES = ("subject", "palette", "camera", "lighting")
