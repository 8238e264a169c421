"""Plan-quality benchmark of the offline `echo-os plan`: does a plan stay on the theme it was asked for?

    PYTHONPATH=. python benchmarks/plan_quality.py --count 12 --json benchmarks/results/plan-quality-after.json
    PYTHONPATH=/work/main python benchmarks/plan_quality.py --count 12   # the planner of another checkout

Each intent below (written for this benchmark: assets, collections, stories, textures, in English,
French, Turkish, German, Spanish, Italian and Portuguese) is planned by the real command, in-process
(`echo-os --home TMP plan PROJECT INTENT --count N --seed S --method offline --ignore-memory --json`, a
fresh workspace per intent, so no past work steers it). Per plan item, on its prompt as plan.json has it:

- on topic:  the prompt without the intent's own words (the intent as written and the theme the planner
             restated, wherever they stand: what the planner added) names one of the intent's `on_topic`
             words (word-prefix match, case-insensitive). An item that only repeats the intent is not
             counted on topic: what is measured is what the planner adds.
- leaked:    the whole positive prompt names one of the intent's `leaks` (the excluded concept in any
             of its words, e.g. "human forms" -> human, figure, person, people, face, portrait).
- sim:       MiniLM (all-MiniLM-L6-v2) cosine between the prompt and the intent's English `topic`.
- pairwise:  the mean MiniLM cosine between the plan's prompts (lower is more varied).

Figures: share of items on topic, mean sim to the topic, mean pairwise similarity, items with a leaked
exclusion. Targets (issue 27): >= 90% on topic, 0 leaked, pairwise no higher than the planner before.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

PEOPLE = ("human", "humans", "figure", "person", "people", "face", "portrait", "man ", "woman", "child",
          "body", "crowd", "fisherman", "sailor", "silhouette of a")


@dataclass(frozen=True)
class Case:
    project: str
    intent: str
    topic: str  # what the intent asks for, in English (the MiniLM model reads English)
    on_topic: tuple[str, ...]
    leaks: tuple[str, ...] = ()
    kind: str = "prompts"


CASES: tuple[Case, ...] = (
    # game and product assets
    Case("Video Game Assets", "medieval fantasy weapons", "medieval fantasy weapons",
         ("sword", "axe", "mace", "bow", "shield", "dagger", "spear", "halberd", "hammer", "crossbow", "flail",
          "glaive", "scimitar", "rapier", "lance", "morning star", "pike", "falchion", "blade", "quiver",
          "trident", "scythe", "katana", "sabre", "saber", "club", "javelin", "dirk", "cleaver", "pick",
          "warhammer", "longsword", "greatsword", "buckler", "arrow", "claymore", "poleaxe", "partisan",
          "war scythe", "sling", "knife", "staff", "weapon", "hilt", "kopis", "khopesh", "zweihander", "estoc",
          "tomahawk", "bardiche", "gauntlet", "helm", "armour", "armor")),
    Case("Spaceship Kit", "sci-fi spaceship parts for a game", "science fiction spaceship parts",
         ("engine", "thruster", "cockpit", "hull", "wing", "turret", "antenna", "reactor", "landing gear", "panel",
          "cannon", "module", "hatch", "fin", "radar", "nozzle", "airlock", "dish", "booster", "canopy",
          "console", "fuel", "cargo", "shield generator", "solar", "strut", "docking", "laser", "pod", "nacelle",
          "tank", "sensor", "array", "bay", "plating", "vent", "spaceship", "starship")),
    Case("Potions", "potion bottles for an rpg inventory, no text or labels", "fantasy potion bottles",
         ("bottle", "flask", "vial", "potion", "phial", "decanter", "jar", "ampoule", "elixir", "cork", "carafe",
          "tincture", "flagon", "gourd", "beaker", "retort", "alembic", "urn", "stopper", "canteen"),
         ("text", "label", "lettering", "writing")),
    Case("Forest Pack", "low poly trees for a mobile game", "low poly trees",
         ("oak", "pine", "birch", "palm", "willow", "tree", "fir", "cypress", "maple", "spruce", "bush", "cedar",
          "baobab", "sapling", "stump", "shrub", "cherry", "acacia", "elm", "beech", "larch", "poplar", "sequoia",
          "redwood", "ash", "yew", "juniper", "mangrove", "bonsai", "trunk", "canopy", "conifer", "olive")),
    Case("Critters", "cute fantasy creatures sticker set", "cute fantasy creatures",
         ("dragon", "griffin", "gryphon", "unicorn", "phoenix", "slime", "fox", "owl", "creature", "sprite",
          "golem", "kitsune", "basilisk", "wyvern", "pegasus", "kraken", "imp", "fairy", "faerie", "salamander",
          "hydra", "yeti", "sphinx", "chimera", "mimic", "cat", "bat", "bunny", "hare", "mushroom", "beast",
          "serpent", "kirin", "qilin", "manticore", "jackalope", "moth", "axolotl", "dragonling", "familiar",
          "wisp", "monster", "pixie", "troll", "goblin", "ent", "hippogriff", "cockatrice", "naga")),
    Case("Steam Garage", "steampunk vehicles", "steampunk vehicles",
         ("airship", "locomotive", "tricycle", "carriage", "submarine", "dirigible", "tank", "car", "motorcar",
          "walker", "velocipede", "balloon", "zeppelin", "train", "engine", "ornithopter", "automobile",
          "steamship", "boat", "bicycle", "motorcycle", "tractor", "wagon", "cart", "gyrocopter", "rover",
          "digger", "crawler", "omnibus", "tram", "cab", "buggy", "sled", "vehicle", "steam")),
    Case("Parlour Props", "victorian furniture props", "victorian furniture",
         ("chair", "armchair", "sofa", "table", "cabinet", "wardrobe", "desk", "bed", "chaise", "bureau",
          "bookcase", "dresser", "stool", "clock", "mirror", "chest", "settee", "ottoman", "sideboard",
          "secretary", "footstool", "screen", "stand", "console", "commode", "vanity", "hutch", "rocker",
          "bench", "etagere", "whatnot", "divan", "lamp", "cupboard", "credenza", "davenport", "loveseat",
          "furniture")),
    # textures
    Case("Stone Walls", "seamless stone wall textures", "stone wall texture",
         ("stone", "brick", "cobble", "masonry", "granite", "slate", "limestone", "sandstone", "flagstone",
          "rubble", "wall", "marble", "basalt", "ashlar", "fieldstone", "drystone", "rock", "pebble", "flint",
          "travertine", "mortar", "block", "quartzite", "tuff", "schist", "boulder")),
    Case("Planks", "wood plank textures for a game", "wood plank texture",
         ("oak", "pine", "plank", "walnut", "birch", "board", "grain", "teak", "mahogany", "cedar", "timber",
          "parquet", "wood", "ash", "maple", "cherry", "ebony", "driftwood", "beech", "spruce", "elm", "larch",
          "floor", "deck", "bark", "rosewood", "bamboo", "plywood", "veneer", "log", "beam", "hardwood")),
    Case("Textiles", "woven fabric textures", "woven fabric texture",
         ("linen", "wool", "silk", "tweed", "brocade", "damask", "weave", "canvas", "velvet", "cotton", "jacquard",
          "twill", "herringbone", "plaid", "tartan", "burlap", "denim", "felt", "knit", "satin", "chiffon",
          "corduroy", "hessian", "jute", "gingham", "ikat", "kilim", "tapestry", "muslin", "fabric", "textile",
          "cloth", "lace", "chenille", "houndstooth", "basketweave", "boucle", "weft", "warp")),
    Case("Rust", "rusty metal surface textures", "rusty metal texture",
         ("rust", "iron", "steel", "metal", "corrugated", "plate", "sheet", "copper", "bronze", "patina", "tin",
          "rivet", "chrome", "zinc", "brass", "aluminium", "aluminum", "tread", "grate", "mesh", "panel", "weld",
          "scrap", "oxid", "pitted", "galvan", "lead", "hull", "barrel", "pipe", "girder", "diamond plate")),
    Case("Wallpaper", "abstract geometric wallpaper patterns", "geometric patterns",
         ("hexagon", "triangle", "chevron", "grid", "lattice", "circle", "stripe", "diamond", "tessellation",
          "zigzag", "polygon", "square", "rhomb", "lozenge", "concentric", "spiral", "dot", "wave", "cube",
          "isometric", "trellis", "quatrefoil", "star", "octagon", "arc", "ring", "line", "check", "fret",
          "meander", "mosaic", "penrose", "moire", "op art", "geometric", "ogee", "scale", "honeycomb",
          "herringbone", "basketweave", "interlock", "knot")),
    # collections
    Case("Ruzgar NFT", "warm fractal, no human forms", "warm fractal art",
         ("fractal", "spiral", "mandelbrot", "julia", "recurs", "fern", "branch", "vortex", "swirl", "lattice",
          "kaleidoscope", "geometr", "nautilus", "romanesco", "snowflake", "dendrit", "coral", "sierpinski",
          "koch", "spiral", "helix", "tendril", "flame", "nebula", "filigree", "tessellat", "self-similar",
          "mandala", "infinite", "bloom", "shell", "lightning", "crystal", "tree", "fibonacci", "golden ratio",
          "feather", "whorl", "fold", "weave", "labyrinth", "maze"), PEOPLE),
    Case("Kervan NFT", "ornate ceramic tiles in iznik blue, no human forms", "ornate iznik ceramic tiles",
         ("tulip", "carnation", "saz", "rumi", "border", "medallion", "hexagon", "rosette", "arabesque",
          "palmette", "tile", "panel", "star", "lattice", "cloud band", "pomegranate", "hyacinth", "floral",
          "motif", "cintamani", "hatayi", "rose", "vine", "lotus", "leaf", "octagon", "mihrab", "spandrel",
          "frieze", "cartouche", "knot", "interlac", "scroll", "quatrefoil", "pattern", "cobalt", "turquoise",
          "blossom", "plum", "cypress", "peony"), PEOPLE),
    Case("Nouveau", "art nouveau posters of flowers", "art nouveau flower posters",
         ("iris", "lily", "poppy", "rose", "peony", "orchid", "tulip", "flower", "blossom", "wisteria", "lotus",
          "vine", "chrysanthemum", "dahlia", "thistle", "magnolia", "sunflower", "hydrangea", "anemone",
          "cornflower", "water lily", "foxglove", "clematis", "honeysuckle", "narcissus", "daffodil", "camellia",
          "jasmine", "hyacinth", "mistletoe", "fern", "bloom", "bouquet", "petal", "whiplash", "garland",
          "lilac", "calla", "morning glory", "gladiol", "carnation", "bud")),
    Case("Ukiyo Sea", "japanese ukiyo-e style sea creatures", "ukiyo-e sea creatures",
         ("wave", "octopus", "carp", "koi", "whale", "crab", "fish", "squid", "turtle", "eel", "shrimp",
          "jellyfish", "seahorse", "shell", "lobster", "ray", "manta", "sea bream", "tuna", "pufferfish",
          "fugu", "urchin", "nautilus", "starfish", "dolphin", "shark", "seal", "prawn", "clam", "oyster",
          "sea slug", "nudibranch", "sea turtle", "flounder", "mackerel", "sardine", "bream", "sea dragon",
          "cuttlefish", "coral", "anemone", "kraken")),
    Case("Cathedral", "gothic cathedral architecture", "gothic cathedral architecture",
         ("arch", "spire", "buttress", "rose window", "vault", "gargoyle", "nave", "portal", "tower", "cloister",
          "pinnacle", "tracery", "cathedral", "apse", "choir", "crypt", "column", "pillar", "window", "facade",
          "façade", "transept", "chapel", "altar", "belfry", "bell", "stained glass", "tympanum", "chimera",
          "crocket", "finial", "triforium", "clerestory", "ambulatory", "door", "stair", "roof", "fleche",
          "rib", "quatrefoil", "cathedra", "pulpit", "organ", "arcade", "gallery", "statue", "niche")),
    Case("Fungi", "vintage botanical illustrations of mushrooms", "botanical mushroom illustrations",
         ("mushroom", "toadstool", "morel", "chanterelle", "fung", "amanita", "puffball", "cap", "gill", "bolete",
          "porcini", "truffle", "oyster", "shiitake", "enoki", "lichen", "mycel", "spore", "bracket", "inkcap",
          "ink cap", "fly agaric", "death cap", "russula", "lactarius", "stinkhorn", "chicken of the woods",
          "lion's mane", "turkey tail", "honey fungus", "parasol", "milk cap", "earthstar", "cep", "agaric",
          "mycena", "cortinarius")),
    Case("Tin Men", "retro sci-fi robots", "retro robots",
         ("robot", "android", "automaton", "mech", "droid", "cyborg", "machine", "tin", "servo", "antenna",
          "rocket", "ray gun", "walker", "drone", "clockwork", "sentinel", "golem", "rover", "bot", "dial",
          "gauge", "console", "capsule", "spaceship", "saucer", "tank", "tripod", "humanoid")),
    Case("Cafe", "cozy coffee shop interiors", "cozy coffee shop interior",
         ("cafe", "café", "counter", "espresso", "bar", "booth", "table", "armchair", "shelf", "shelves", "nook",
          "window", "corner", "bookshelf", "sofa", "lamp", "fireplace", "plant", "mug", "cup", "pastry",
          "chalkboard", "stool", "bench", "rug", "brick", "cushion", "teapot", "grinder", "latte", "coffee",
          "seat", "room", "terrace", "kitchen", "library", "reading", "lantern", "candle", "menu", "interior")),
    Case("Street Eats", "street food of southeast asia", "southeast asian street food",
         ("noodle", "satay", "dumpling", "bun", "curry", "pho", "rice", "skewer", "soup", "pancake", "roti",
          "laksa", "spring roll", "stall", "banh", "mango", "coconut", "pad thai", "fish ball", "wok", "tofu",
          "durian", "sticky", "grill", "prawn", "shrimp", "egg", "cart", "bowl", "broth", "chili", "chilli",
          "sambal", "nasi", "rendang", "fritter", "fruit", "dessert", "tea", "hawker", "market", "basket",
          "steamer", "bbq", "barbecue", "food")),
    Case("Tarot", "hand-painted tarot cards of celestial bodies", "tarot cards of celestial bodies",
         ("sun", "moon", "star", "comet", "planet", "constellation", "eclipse", "crescent", "galaxy", "nebula",
          "meteor", "aurora", "saturn", "jupiter", "venus", "mars", "mercury", "orbit", "zodiac", "cosmos",
          "celestial", "solar", "lunar", "astrolabe", "ring", "milky way", "supernova", "asteroid", "sky",
          "dawn", "dusk", "twilight", "equinox", "solstice", "orrery")),
    # stories
    Case("Sea Story", "a quiet harbour without people", "a quiet harbour",
         ("harbour", "harbor", "boat", "pier", "quay", "lighthouse", "jetty", "dock", "mooring", "gull", "net",
          "buoy", "breakwater", "sailboat", "wharf", "crane", "sail", "mast", "hull", "rope", "anchor", "water",
          "sea", "wave", "tide", "marina", "slipway", "bollard", "crate", "lobster pot", "fishing", "dinghy",
          "rowboat", "trawler", "ferry", "seawall", "storm", "fog", "dawn", "moon", "lantern", "shed", "pontoon"),
         ("people", "person", "man ", "woman", "fisherman", "sailor", "crowd", "child", "figure", "human"), "story"),
    Case("Keeper", "a lighthouse keeper's long night", "a lighthouse keeper's night",
         ("lighthouse", "lamp", "keeper", "storm", "stair", "lantern", "sea", "cliff", "wave", "ship", "rock",
          "beacon", "night", "light", "lens", "gallery", "tower", "window", "rain", "wind", "fog", "oil",
          "logbook", "kettle", "door", "dawn", "moon", "gull", "boat", "spiral", "flare", "radio", "shore",
          "horizon", "lightning", "candle", "coat", "clock", "bell"), (), "story"),
    Case("Fox Winter", "a fox cub's first winter", "a fox cub in winter",
         ("fox", "cub", "snow", "den", "forest", "winter", "frost", "burrow", "track", "ice", "pine", "hare",
          "owl", "mouse", "vole", "blizzard", "birch", "tree", "drift", "meadow", "river", "stream", "moon",
          "dawn", "storm", "icicle", "thaw", "berry", "stump", "log", "hollow", "fern", "fur", "tail", "paw",
          "mother", "vixen", "field", "hill", "wind"), (), "story"),
    Case("Caravan", "a desert caravan crossing the dunes", "a desert caravan on the dunes",
         ("caravan", "camel", "dune", "oasis", "tent", "sand", "desert", "caravanserai", "well", "palm",
          "sandstorm", "saddle", "rug", "lantern", "star", "moon", "sun", "heat", "mirage", "rock", "canyon",
          "ridge", "dawn", "dusk", "campfire", "fire", "water", "trail", "track", "storm", "wind", "bell",
          "bundle", "cargo", "spice", "silk", "night", "horizon", "ruin"), (), "story"),
    Case("Station", "a robot gardener on an abandoned space station", "a robot gardener on a space station",
         ("robot", "garden", "plant", "station", "greenhouse", "hydropon", "seedling", "vine", "corridor",
          "airlock", "window", "earth", "star", "planet", "module", "pot", "watering", "leaf", "flower", "moss",
          "fern", "tomato", "sprout", "soil", "lamp", "light", "hatch", "console", "panel", "tree", "bloom",
          "orbit", "space", "dome", "bay", "drone", "root", "harvest", "hull", "reactor"), (), "story"),
    # other languages
    Case("Port Tranquille", "un port tranquille sans personne", "a quiet harbour",
         ("harbour", "harbor", "boat", "pier", "quay", "lighthouse", "jetty", "dock", "mooring", "gull", "net",
          "buoy", "breakwater", "sailboat", "wharf", "sail", "mast", "rope", "anchor", "sea", "tide", "marina",
          "dinghy", "rowboat", "trawler", "ferry", "seawall", "bateau", "quai", "phare", "jetée", "voilier",
          "water", "crate", "fishing", "slipway", "bollard", "pontoon", "shed"),
         ("personne", "people", "person", "man ", "woman", "fisherman", "sailor", "crowd", "child", "figure",
          "human")),
    Case("Cini", "iznik çinisi desenleri, insansız", "iznik tile patterns",
         ("tulip", "carnation", "saz", "rumi", "border", "medallion", "hexagon", "rosette", "arabesque",
          "palmette", "tile", "panel", "star", "lattice", "cloud band", "pomegranate", "hyacinth", "floral",
          "motif", "cintamani", "hatayi", "rose", "vine", "lotus", "leaf", "octagon", "frieze", "cartouche",
          "knot", "interlac", "scroll", "pattern", "lale", "karanfil", "cobalt", "turquoise", "blossom", "peony"),
         ("insan",) + PEOPLE),
    Case("Burg", "mittelalterliche Burg ohne Menschen", "a medieval castle",
         ("castle", "burg", "tower", "turm", "keep", "wall", "gate", "drawbridge", "battlement", "moat", "rampart",
          "fortress", "courtyard", "bailey", "barbican", "portcullis", "donjon", "curtain wall", "parapet",
          "merlon", "crenel", "chapel", "hall", "stair", "bridge", "bastion", "turret", "watchtower", "arrow slit",
          "dungeon", "cliff", "hill", "ruin", "banner", "flag", "well", "stable", "forge", "kitchen",
          "gatehouse", "window", "roof", "castle"),
         ("menschen", "mensch") + PEOPLE),
    Case("Armas", "armas medievales sin sangre", "medieval weapons",
         ("sword", "axe", "mace", "bow", "shield", "dagger", "spear", "halberd", "hammer", "crossbow", "flail",
          "glaive", "scimitar", "rapier", "lance", "morning star", "pike", "falchion", "blade", "quiver",
          "trident", "scythe", "sabre", "saber", "club", "javelin", "arrow", "claymore", "poleaxe", "knife",
          "staff", "weapon", "espada", "hacha", "escudo", "maza", "daga", "lanza", "arco", "warhammer",
          "longsword", "greatsword", "buckler", "bardiche", "helm", "gauntlet", "armour", "armor"),
         ("sangre", "blood", "gore", "bloody")),
    Case("Vasi", "vasi di ceramica senza decorazioni floreali", "ceramic vases",
         ("vase", "vaso", "vasi", "jar", "amphora", "pot", "urn", "ceramic", "jug", "bowl", "pitcher", "ewer",
          "flask", "bottle", "krater", "hydria", "lekythos", "kylix", "stoneware", "porcelain", "earthenware",
          "terracotta", "celadon", "raku", "glaze", "vessel", "crock", "pithos", "canopic", "planter",
          "decanter", "carafe", "stamnos", "oinochoe", "moon jar", "gourd", "teapot", "cup", "beaker"),
         ("floral", "flower", "fiori", "floreali", "blossom", "rose ", "petal", "tulip", "lotus")),
    Case("Casas", "casas coloniais sem pessoas", "colonial houses",
         ("house", "casa", "facade", "façade", "balcony", "window", "door", "colonial", "veranda", "porch",
          "roof", "street", "courtyard", "shutter", "arch", "column", "tile", "wall", "mansion", "villa",
          "townhouse", "cottage", "manor", "church", "plaza", "square", "garden", "gate", "staircase", "stair",
          "fountain", "lantern", "cobble", "terrace", "hacienda", "chapel", "azulejo", "row", "building"),
         ("pessoas", "people", "person", "man ", "woman", "crowd", "child", "figure", "human")),
    Case("Alpine", "a snowy alpine village, no cars", "a snowy alpine village",
         ("chalet", "cabin", "church", "roof", "bridge", "village", "house", "barn", "path", "snow", "mountain",
          "peak", "pine", "fir", "chimney", "smoke", "steeple", "inn", "fountain", "square", "sled", "sleigh",
          "lantern", "fence", "hut", "mill", "stream", "river", "valley", "slope", "forest", "window", "balcony",
          "woodpile", "cow", "goat", "bell", "frost", "icicle", "street", "lane", "alley", "chapel"),
         ("car", "cars", "vehicle", "truck", "traffic", "automobile")),
)


def _contains(text: str, words: tuple[str, ...]) -> bool:
    lowered = f" {text.lower()} "
    return any(re.search(r"(?<![a-zçğıöşü])" + re.escape(word), lowered) for word in words)


def _variation(prompt: str, intent: str, heads: tuple[str, ...] = ()) -> str:
    """The prompt without the intent's own words (what the planner added): the intent as written, its first
    clause, and the theme the planner restated (plan.json's `theme`, an item's `theme` part such as
    "un port tranquille (a quiet harbour)"), wherever in the prompt they stand."""
    text = prompt
    for phrase in sorted({intent, intent.split(",")[0], *heads} - {""}, key=len, reverse=True):
        text = re.sub(re.escape(phrase), " ", text, count=1, flags=re.IGNORECASE)
    return text


@dataclass
class CaseResult:
    project: str
    intent: str
    kind: str
    items: int
    on_topic: int
    leaked: int
    mean_sim_to_topic: float
    mean_pairwise_sim: float
    seconds: float
    off_topic_examples: list[str]
    leaked_examples: list[str]
    negative_prompt: str
    prompts: list[str]


def plan_items(case: Case, count: int, seed: int, kind_of_plan: str) -> tuple[list[str], str, tuple[str, ...]]:
    from echo_os.cli import main

    with tempfile.TemporaryDirectory() as home:
        args = ["--home", home, "plan", case.project, case.intent, "--count", str(count), "--seed", str(seed),
                "--method", "offline", "--ignore-memory", "--json"]
        if kind_of_plan != "prompts":
            args += ["--kind", kind_of_plan]
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(args)
            except SystemExit as exit_:
                if exit_.code:
                    raise RuntimeError(f"{case.intent!r}: exit {exit_.code}: {err.getvalue().strip()}") from None
        plan = json.loads(out.getvalue())
    heads = {plan.get("theme") or ""} | {item.get("parts", {}).get("theme") or "" for item in plan["items"]}
    return [item["prompt"] for item in plan["items"]], plan["constraints"]["negative_prompt"], tuple(heads)


def measure_case(case: Case, count: int, seed: int, story_kind: bool, embed) -> CaseResult:
    started = time.perf_counter()
    prompts, negative, heads = plan_items(case, count, seed, case.kind if story_kind else "prompts")
    seconds = time.perf_counter() - started
    vectors = embed(prompts)
    topic = embed([case.topic])[0]
    similarity = vectors @ vectors.T
    n = len(prompts)
    pairwise = float((similarity.sum() - np.trace(similarity)) / (n * (n - 1))) if n > 1 else 0.0
    on_topic = [p for p in prompts if _contains(_variation(p, case.intent, heads), case.on_topic)]
    leaked = [p for p in prompts if case.leaks and _contains(p, case.leaks)]
    return CaseResult(project=case.project, intent=case.intent, kind=case.kind, items=n, on_topic=len(on_topic),
                      leaked=len(leaked), mean_sim_to_topic=float((vectors @ topic).mean()),
                      mean_pairwise_sim=pairwise, seconds=round(seconds, 2),
                      off_topic_examples=[p for p in prompts if p not in on_topic][:3], leaked_examples=leaked[:3],
                      negative_prompt=negative, prompts=prompts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=12, help="items per plan")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-story-kind", action="store_true",
                        help="plan the story intents as prompt lists too (for a planner without --kind story)")
    parser.add_argument("--only", default=None, help="run only the intents whose project contains this")
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    args = parser.parse_args()

    from echo_os.memory.artifacts import quiet_model_loading
    from echo_os.memory.embedders import MiniLMEmbedder

    quiet_model_loading()
    embedder = MiniLMEmbedder()
    cases = [case for case in CASES if args.only is None or args.only.lower() in case.project.lower()]
    results = []
    for case in cases:
        result = measure_case(case, args.count, args.seed, not args.no_story_kind, embedder.embed_texts)
        results.append(result)
        print(f"{result.on_topic:3d}/{result.items:<3d} on topic  leaked {result.leaked}  "
              f"sim {result.mean_sim_to_topic:.3f}  pairwise {result.mean_pairwise_sim:.3f}  {case.intent}",
              file=sys.stderr)
    items = sum(r.items for r in results)
    summary = {
        "intents": len(results), "items": items,
        "share_on_topic": round(sum(r.on_topic for r in results) / items, 4),
        "mean_sim_to_topic": round(float(np.mean([r.mean_sim_to_topic for r in results])), 4),
        "mean_pairwise_sim": round(float(np.mean([r.mean_pairwise_sim for r in results])), 4),
        "leaked_items": sum(r.leaked for r in results),
        "intents_with_a_leak": sum(1 for r in results if r.leaked),
        "seconds_per_plan": round(float(np.mean([r.seconds for r in results])), 2),
    }
    import echo_os

    document = {"summary": summary, "count": args.count, "seed": args.seed, "code": str(Path(echo_os.__file__).parent),
                "machine": f"{platform.machine()}, {platform.python_version()}", "cases": [asdict(r) for r in results]}
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
