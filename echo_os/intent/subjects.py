"""The subject vocabulary of the offline planner, written for echo-os: visual nouns grouped by domain, each
domain with the attribute axes that belong to it (material, era, ornament, condition, scale), and the
palettes, lighting and framings the planner dresses a subject in.

A domain's `framing` says how its subjects are shown when the intent does not say: "asset" (an object
isolated on a neutral background, orthographic, studio light), "texture" (a seamless surface seen flat),
"pattern" (a flat ornamental design) or "scene" (a place: compositions, lenses and lighting vary).
`phrases()` lists every subject with every attribute value of its domain (the vocabulary's full size);
`subject_texts()` is what is embedded for relevance (one line per noun, with its domain, so "bow" next to
"weapons" reads as the weapon). Nothing here names a person: the intent says who is in the picture.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Framing = Literal["asset", "texture", "pattern", "scene"]
AXES = ("material", "era", "ornament", "condition", "scale")


def _words(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


@dataclass(frozen=True)
class Domain:
    name: str
    label: str  # what the domain is, in words MiniLM reads (embedded beside each noun)
    framing: Framing
    nouns: tuple[str, ...]
    attributes: dict[str, tuple[str, ...]] = field(default_factory=dict)  # axis -> values (AXES)


def _domain(name: str, label: str, framing: Framing, nouns: str, **axes: str) -> Domain:
    return Domain(name=name, label=label, framing=framing, nouns=_words(nouns),
                  attributes={axis: _words(values) for axis, values in axes.items()})


DOMAINS: tuple[Domain, ...] = (
    _domain("weapons", "medieval and fantasy weapons", "asset",
            "longsword, broadsword, arming sword, greatsword, claymore, rapier, sabre, scimitar, falchion, katana, "
            "estoc, zweihander, cutlass, dagger, dirk, stiletto, kris dagger, throwing knives, battle axe, "
            "double-bitted axe, bearded axe, hand axe, tomahawk, war hammer, maul, flanged mace, morning star, "
            "flail, war club, quarterstaff, spear, pike, halberd, glaive, poleaxe, bardiche, jousting lance, "
            "trident, war scythe, javelin, longbow, recurve bow, shortbow, crossbow, arbalest, sling, "
            "quiver of arrows, kite shield, round shield, tower shield, buckler, heater shield, khopesh, "
            "wizard's staff, rune-carved war pick",
            material="forged steel, damascus steel, blackened iron, bronze, silver-inlaid steel, obsidian, "
                     "bone and sinew, yew wood and iron, meteoric iron, crystal, oak and rawhide",
            era="viking-age, carolingian, high medieval, late gothic, crusader, elven, dwarven, orcish, byzantine, "
                "moorish",
            ornament="with a gilded crossguard, with runic engravings, with a leather-wrapped grip, "
                     "with a gem-set pommel, with filigree inlay, with etched vine scrollwork, with a dragon-head motif, "
                     "with knotwork carving, with a tasselled cord",
            condition="pristine, battle-worn, notched and rusted, ceremonial, enchanted, "
                      "freshly forged",
            scale="oversized, slender, heavy, compact"),
    _domain("armour", "medieval armour and helmets", "asset",
            "great helm, barbute, bascinet, sallet, horned helmet, nasal helmet, chainmail hauberk, breastplate, "
            "pauldron, gauntlet, greaves, sabatons, gorget, vambrace, brigandine, lamellar armour, scale mail, "
            "plate cuirass, coif, jousting armour on a stand, heraldic tabard on a stand, armoured boots",
            material="polished steel, blackened steel, bronze, riveted iron, boiled leather, gilded steel",
            era="high medieval, late gothic, viking-age, elven, dwarven, samurai, byzantine",
            ornament="with etched borders, with brass rivets, with a heraldic crest, with fluted ridges, "
                     "with engraved scrollwork",
            condition="pristine, dented and scarred, rusted, ceremonial", scale="heavy, light, oversized"),
    _domain("architecture", "buildings and architecture", "scene",
            "gothic cathedral, rose window, flying buttresses, ribbed vault, cloister, bell tower, spire, gargoyle, "
            "stone arch bridge, castle keep, gatehouse, drawbridge, curtain wall, watchtower, windmill, water mill, "
            "pagoda, torii gate, minaret, domed mosque, caravanserai, colonnade, amphitheatre, aqueduct, ziggurat, "
            "temple ruins, palace facade, row of townhouses, timber-framed house, thatched cottage, chalet, "
            "log cabin, barn, glasshouse, observatory, clock tower, market hall, covered bazaar, stepwell, "
            "stave church, chapel, fortress, bastion, city gate, portico, arcade, grand staircase, belfry, crypt, "
            "mausoleum, triumphal arch, colonial house with a veranda, hacienda courtyard, lighthouse, "
            "tracery window, cathedral nave, tympanum portal, pinnacle with crockets",
            material="limestone, sandstone, red brick, dark timber, white marble, granite, whitewashed plaster, "
                     "glazed tiles, basalt",
            era="romanesque, gothic, renaissance, baroque, ottoman, art deco, victorian, colonial, medieval, ancient",
            ornament="with carved tracery, with mosaic inlay, with wrought iron railings, with muqarnas, "
                     "with stained glass, with stucco reliefs, with painted shutters",
            condition="newly built, weathered, overgrown ruin, restored, snow-covered, crumbling",
            scale="towering, modest, sprawling, intimate"),
    _domain("castle", "a medieval castle and its parts", "scene",
            "castle on a hill, castle keep, donjon, barbican, portcullis, drawbridge over a moat, battlements, "
            "curtain wall, inner bailey, courtyard well, great hall, castle chapel, spiral stair in a tower, "
            "arrow slits, gatehouse, watchtower, ramparts, round tower, castle kitchen, forge in the bailey, "
            "stables, dungeon, banners on the walls, ruined castle by a lake",
            material="grey granite, sandstone, limestone, flint and rubble, dark basalt",
            era="norman, high medieval, late gothic, crusader, romanesque",
            condition="intact and proud, weathered, ivy-covered ruin, snow-covered, half-restored",
            scale="towering, compact, sprawling"),
    _domain("ornament", "ornamental tile motifs and decorative patterns", "pattern",
            "rosette, quatrefoil, ogee lattice, arabesque scrollwork, mandala rosette, acanthus scroll, "
            "egg and dart moulding, meander fret, celtic knot, guilloche band, interlaced knotwork, "
            "cartouche with scrolls, central medallion, border frieze, encaustic floor tile, majolica plate, "
            "paisley boteh, damask medallion, fleur-de-lis, vine scroll border, grape vine frieze, chinoiserie panel",
            material="glazed ceramic, enamel, porcelain, terracotta, painted stucco, carved plaster",
            era="renaissance, art nouveau, victorian, gothic revival, baroque",
            ornament="with gold accents, with fine black outlines, on a cream ground, in two tones",
            condition="pristine, crazed antique glaze, chipped antique, freshly made",
            scale="a single tile, a four-tile repeat, a large panel, a narrow border strip"),
    # Tile traditions: an intent that names one (TRADITION_WORDS) draws only from its own domain.
    _domain("ornament_iznik", "ottoman iznik tile motifs", "pattern",
            "tulip motif, carnation motif, saz leaf motif, rumi arabesque, hatayi palmette, cintamani motif, "
            "cloud band, pomegranate motif, hyacinth spray, rose sprig, plum blossom branch, cypress tree motif, "
            "lotus palmette, peony medallion, rosette medallion, corner quarter medallion, hexagonal tile, "
            "square tile panel, tile border frieze, spandrel panel, mihrab panel, cartouche border, "
            "scrolling saz leaves and rosettes, tulip and carnation vase panel",
            material="stonepaste fritware, quartz frit body under a clear glaze, fritware on a white slip",
            era="16th-century ottoman, imperial ottoman court style",
            ornament="in underglaze cobalt, in turquoise and cobalt, with raised bole red accents, "
                     "on a white slip ground, with fine black outlines, with sage green accents",
            condition="pristine glaze, crazed antique glaze, chipped antique, freshly fired",
            scale="a single tile, a four-tile repeat, a large panel, a narrow border strip"),
    _domain("ornament_azulejo", "portuguese and spanish azulejo tiles", "pattern",
            "azulejo panel, azulejo frieze, azulejo pattern tile, cuerda seca tile, arista tile, "
            "baroque cartouche frame, armillary sphere motif, rope-twist border, camellia tile, "
            "diamond-point tile, checkerboard tile wall, acanthus corner tile, azulejo facade",
            material="tin-glazed earthenware, majolica",
            era="17th-century portuguese, 18th-century baroque, sevillian, mudéjar",
            ornament="in cobalt blue on white, in blue and yellow ochre, with manganese purple outlines, "
                     "with green and ochre accents",
            condition="pristine glaze, crazed antique glaze, chipped antique, weathered on a facade",
            scale="a single tile, a four-tile repeat, a large panel, a narrow border strip"),
    _domain("ornament_zellige", "moroccan zellige mosaic tilework", "pattern",
            "zellige mosaic, eight-pointed star rosette, khatam star, sixteen-point star rosette, "
            "interlaced girih strapwork, tessellated star pattern, zellige fountain panel, zellige wainscot, "
            "chevron zellige, hand-cut tesserae, star and cross tessellation, octagonal zellige medallion",
            material="hand-cut glazed terracotta tesserae, enamelled clay tesserae",
            era="marinid, saadian, alaouite",
            ornament="in emerald green and cobalt, in ochre, black and white, in turquoise and honey, "
                     "with a white grout line",
            condition="pristine glaze, worn glaze, freshly laid",
            scale="a single tile, a four-tile repeat, a large panel, a narrow border strip"),
    _domain("ornament_delft", "dutch delftware tiles", "pattern",
            "delftware tile, windmill tile, sailing ship tile, tulip vase tile, ox-head corner motif, "
            "spider corner motif, landscape roundel tile, flower pot tile, delft tile panel, canal house tile",
            material="tin-glazed earthenware",
            era="17th-century dutch, 18th-century dutch",
            ornament="in delft blue on white, in manganese purple on white, with fine brush outlines",
            condition="pristine glaze, crazed antique glaze, chipped antique",
            scale="a single tile, a four-tile repeat, a large panel, a narrow border strip"),
    _domain("ornament_talavera", "mexican talavera tiles and pottery", "pattern",
            "talavera tile, talavera plate, talavera flower tile, sunflower tile, talavera star tile, "
            "talavera border tile, talavera vase motif, bird and flower talavera tile",
            material="tin-glazed earthenware, majolica",
            era="colonial puebla, contemporary puebla",
            ornament="in cobalt blue on white, in yellow, orange and cobalt, with green and black outlines",
            condition="pristine glaze, crazed antique glaze, freshly fired",
            scale="a single tile, a four-tile repeat, a large panel, a narrow border strip"),
    _domain("creatures", "fantasy creatures and monsters", "asset",
            "dragon, wyvern, griffin, hippogriff, phoenix, unicorn, pegasus, basilisk, cockatrice, manticore, "
            "chimera, hydra, kraken, sea serpent, kitsune, kirin, sphinx, fire salamander, stone golem, treant, "
            "slime, mimic chest, will-o'-the-wisp, pixie, imp, goblin, troll, yeti, jackalope, owlbear, dragonling, "
            "fire sprite, moss spirit, mushroom sprite, thunderbird, roc, baby dragon, cloud whale, crystal beetle, "
            "lantern moth",
            material="iridescent scales, soft fur, crystal hide, moss-covered bark, ember-lit skin, feathers",
            era="celtic, norse, japanese folklore, medieval bestiary, high fantasy",
            ornament="with glowing runes, with curling horns, with gem-like eyes, with patterned wings",
            condition="sleeping, curious, fierce, playful, tiny and round", scale="tiny, chubby, towering"),
    _domain("animals", "animals and wildlife", "asset",
            "red fox, fox cub, wolf, brown bear, owl, hawk, heron, crane, red deer stag, hare, rabbit, hedgehog, "
            "badger, otter, beaver, squirrel, raven, crow, magpie, robin, hummingbird, peacock, swan, horse, camel, "
            "elephant, tiger, lion, leopard, lynx, snow leopard, bison, moose, cat, dog, goat, cow, sheep, "
            "puffin, penguin, frog, toad, lizard, chameleon, snake, tortoise, vole, field mouse, stoat",
            condition="alert, resting, curious, running, sleeping, in winter coat", scale="young, old, small"),
    _domain("sea", "sea creatures and marine life", "asset",
            "octopus, squid, cuttlefish, crab, lobster, sea turtle, whale, humpback whale, dolphin, shark, manta ray, "
            "jellyfish, seahorse, starfish, nautilus, pufferfish, koi carp, carp, sea bream, mackerel, eel, shrimp, "
            "clam, oyster, sea urchin, nudibranch, coral, sea anemone, flounder, tuna, leafy sea dragon, "
            "great wave with spray",
            condition="drifting, curling, leaping, resting on the sea floor", scale="tiny, giant"),
    _domain("insects", "insects and small creatures", "asset",
            "moth, butterfly, stag beetle, scarab, dragonfly, honeybee, bumblebee, ladybird, mantis, firefly, "
            "grasshopper, cicada, ant, spider on a web, snail, caterpillar, luna moth, damselfly",
            condition="wings open, at rest, in flight", scale="macro, tiny"),
    _domain("vehicles", "vehicles and machines for travel", "asset",
            "steam locomotive, airship, dirigible, zeppelin, hot air balloon, ornithopter, gyrocopter, "
            "steam tricycle, velocipede, penny-farthing, horse-drawn carriage, stagecoach, hansom cab, tram, "
            "omnibus, motorcar, vintage roadster, motorcycle with sidecar, steam tractor, traction engine, "
            "steam submarine, paddle steamer, galleon, clipper ship, mechanical walker, armoured crawler, rover, "
            "mining cart, wagon, sleigh, rickshaw, biplane, seaplane, rocket, monorail car, land yacht",
            material="riveted brass, polished copper, iron plate, lacquered wood, canvas and bamboo, "
                     "enamelled steel",
            era="victorian, edwardian, steampunk, dieselpunk, art deco, retro-futurist",
            ornament="with gauges and dials, with exposed gears, with pressure pipes, with filigree trim, "
                     "with a painted livery, with smoke stacks",
            condition="gleaming, soot-stained, patched, rusting wreck", scale="toy-sized, personal, hulking, colossal"),
    _domain("spacecraft", "spaceship parts and spacecraft components", "asset",
            "thruster nozzle, ion engine, fusion reactor core, cockpit canopy, hull plating panel, swept wing, "
            "landing gear strut, laser turret, railgun cannon, radar dish, antenna array, airlock hatch, "
            "docking clamp, cargo container, fuel tank, solar panel wing, shield generator, sensor pod, "
            "escape pod, engine nacelle, heat radiator fin, missile pod, tractor beam emitter, navigation console, "
            "life support module, hangar bay door, hyperdrive core, gravity ring segment, booster rocket, "
            "small starfighter, cargo shuttle",
            material="brushed titanium, white composite, carbon fibre, gunmetal plating, gold foil insulation",
            era="retro-futurist, hard sci-fi, sleek futurist, industrial space-age",
            ornament="with warning stripes, with glowing vents, with panel lines and rivets, "
                     "with faction insignia, with exposed cabling",
            condition="factory new, scorched and scarred, salvaged, weathered by micrometeorites",
            scale="modular, compact, massive"),
    _domain("robots", "robots and automatons", "asset",
            "tin robot, ray-gun era robot, clockwork automaton, walking mech, maintenance droid, spider robot, "
            "hover drone, rover robot, gardening robot, welding robot arm, robot dog, tripod walker, sentry robot, "
            "domed-head robot, wind-up toy robot, giant mecha, repair bot, cargo loader, android",
            material="chrome, painted tin, brass and copper, white plastic, riveted steel",
            era="1950s retro, atomic age, steampunk, cyberpunk, futurist",
            ornament="with antenna ears, with dial eyes, with a glass dome head, with blinking lights",
            condition="gleaming, dented, rusting, patched up", scale="tiny, human-sized, towering"),
    _domain("trees", "trees and woody plants", "asset",
            "oak tree, pine tree, birch tree, weeping willow, palm tree, cypress, maple tree, spruce, fir tree, "
            "cedar, baobab, olive tree, cherry blossom tree, bonsai, bamboo clump, acacia, elm, beech, larch, "
            "sequoia, juniper, mangrove, apple tree, ginkgo, yew, tree stump, sapling, shrub, dead tree",
            material="low poly, stylised, realistic", condition="in spring leaf, autumn-coloured, bare in winter, "
                                                             "snow-laden, in blossom",
            scale="young, ancient, small, towering"),
    _domain("flowers", "flowers and flowering plants", "asset",
            "iris, lily, water lily, poppy, rose, peony, orchid, tulip, carnation, hyacinth, chrysanthemum, dahlia, "
            "magnolia, wisteria, camellia, thistle, foxglove, morning glory, daffodil, anemone, hydrangea, clematis, "
            "sunflower, lotus, lavender, cornflower, honeysuckle, jasmine, lilac, calla lily, cherry blossom, "
            "bouquet of wildflowers",
            era="art nouveau, victorian botanical, japanese woodblock, dutch still life",
            condition="in full bloom, in bud, wilting, dew-covered", scale="single stem, cluster, garland"),
    _domain("fungi", "mushrooms and fungi", "asset",
            "fly agaric, chanterelle, morel, porcini, oyster mushroom, shiitake, enoki, puffball, shaggy inkcap, "
            "death cap, parasol mushroom, stinkhorn, turkey tail bracket, chicken of the woods, lion's mane, "
            "honey fungus, russula, milk cap, earthstar, bolete, truffle, coral fungus, bird's nest fungus, "
            "mushroom cluster on a log, fairy ring",
            era="vintage botanical plate, victorian field guide, scientific illustration",
            condition="young button, fully open, cut in cross-section, with spores falling",
            scale="single specimen, cluster"),
    _domain("plants", "garden and house plants", "asset",
            "fern, monstera, cactus, succulent, aloe, agave, ivy, moss, lichen, herb garden, potted palm, "
            "snake plant, pitcher plant, venus flytrap, air plant, bamboo shoots, pothos vine",
            condition="lush, dried, potted, overgrown", scale="small, large"),
    _domain("clothing", "clothing and costume pieces", "asset",
            "hooded cloak, cape, tunic, doublet, corset, kimono, kaftan, poncho, trench coat, leather jacket, "
            "waistcoat, top hat, bowler hat, tricorn hat, fez, crown, circlet, riding boots, sandals, gloves, "
            "belt with pouches, scarf, shawl, ball gown on a dress form, embroidered vest, wizard robe, apron, "
            "beret, kilt, veil, armoured coat",
            material="wool, silk, velvet, leather, linen, brocade, fur-trimmed wool",
            era="medieval, renaissance, victorian, edwardian, 1920s, ottoman, japanese edo",
            ornament="with gold embroidery, with brass buttons, with fur trim, with beadwork",
            condition="new, worn and patched, tattered"),
    _domain("treasure", "jewellery, treasure and precious objects", "asset",
            "ring, signet ring, amulet, pendant, brooch, necklace, bracelet, earrings, jewelled crown, sceptre, orb, "
            "chalice, goblet, reliquary, locket, cameo, tiara, gold coins, gemstone, treasure chest, jewel box",
            material="gold, silver, bronze, enamel, jade, amber, pearl, ruby and gold",
            era="byzantine, celtic, viking-age, art nouveau, ottoman, egyptian",
            ornament="with filigree, with cabochon gems, with engraved scrolls, with granulation",
            condition="polished, tarnished, ancient"),
    _domain("glassware", "potion bottles, flasks and glass vessels", "asset",
            "potion bottle, round-bottom flask, vial, phial, decanter, apothecary jar, ampoule, gourd flask, "
            "hip flask, alembic, retort, beaker, stoppered bottle, carafe, flagon, tincture bottle, perfume bottle, "
            "ink bottle, hourglass, elixir flask with a wax seal, heart-shaped potion bottle, "
            "square bottle with a cork",
            material="clear glass, green glass, cobalt glass, amber glass, crystal, smoked glass",
            ornament="with a cork stopper, with a wax seal, with brass fittings, with a twine wrap, "
                     "with a glowing liquid, with swirling smoke inside",
            condition="full, half-empty, dusty, cracked", scale="tiny, tall, squat"),
    _domain("ceramics", "ceramic vases, jars and vessels", "asset",
            "amphora, krater, hydria, lekythos, kylix, moon jar, celadon vase, raku bowl, stoneware jug, "
            "terracotta pot, porcelain vase, urn, pithos, oinochoe, canopic jar, ewer, pitcher, planter, teapot, "
            "tea bowl, bottle vase, gourd vase, baluster vase, ginger jar, storage jar, bowl",
            material="stoneware, porcelain, terracotta, earthenware, celadon, raku, bone china",
            era="ancient greek, song dynasty, joseon, ottoman, mid-century modern, minoan, etruscan",
            ornament="with a crackle glaze, with a drip glaze, with a matte glaze, with incised lines, "
                     "with a speckled glaze, with a fluted body",
            condition="pristine, chipped antique, kiln-fresh", scale="small, tall, wide"),
    _domain("food", "food and dishes", "asset",
            "bowl of noodles, satay skewers, dumplings, steamed buns, bowl of pho, laksa, nasi goreng, banh mi, "
            "spring rolls, roti canai, mango sticky rice, pad thai, green curry, fish balls on sticks, "
            "coconut drink, durian, grilled corn, ramen, sushi, loaf of bread, croissant, cheese wheel, apple pie, "
            "layer cake, cupcake, macarons, doughnut, pizza, burger, tacos, paella, stew in a pot, roast chicken, "
            "fruit basket, pomegranate, figs, grapes, honeycomb, pancakes, street food stall, hawker cart",
            condition="freshly made, steaming, half-eaten, sizzling", scale="single serving, platter"),
    _domain("drinks", "drinks, coffee and tea", "asset",
            "espresso cup, latte with foam art, cappuccino, pour-over coffee, coffee grinder, moka pot, teapot, "
            "tea set, matcha bowl, glass of lemonade, mug of cocoa, cocktail glass, wine bottle, bubble tea",
            condition="steaming, iced, freshly poured"),
    _domain("furniture", "furniture", "asset",
            "chair, armchair, wingback chair, chaise longue, sofa, settee, loveseat, ottoman, footstool, "
            "writing desk, secretary desk, bureau, bookcase, dresser, wardrobe, armoire, sideboard, credenza, "
            "console table, dining table, side table, tea table, four-poster bed, daybed, rocking chair, bench, "
            "stool, vanity, folding screen, grandfather clock, mantel clock, standing mirror, curio cabinet, "
            "chest of drawers, travelling trunk, hat stand, table lamp, chandelier, candelabra",
            material="mahogany, walnut, oak, rosewood, ebonised wood, cane, velvet upholstery, leather upholstery",
            era="victorian, georgian, art nouveau, art deco, mid-century modern, rococo, shaker",
            ornament="with carved claw feet, with brass inlay, with tufted buttons, with marquetry, "
                     "with turned legs",
            condition="polished, worn antique, restored", scale="small, grand"),
    _domain("props", "small props and objects", "asset",
            "oil lantern, oil lamp, candle, pocket watch, compass, spyglass, treasure map, scroll, leather-bound book, "
            "quill and ink pot, iron key, padlock, wooden barrel, crate, anchor, coil of rope, ship's wheel, bell, "
            "brass telescope, globe, music box, hourglass, magnifying glass, sextant, typewriter, camera, "
            "radio set, kettle, clock",
            material="brass, iron, oak, leather, copper, pewter", era="victorian, nautical, medieval, 1920s",
            condition="polished, worn, antique, broken", scale="small, large"),
    _domain("instruments", "musical instruments", "asset",
            "lute, harp, violin, cello, frame drum, wooden flute, hunting horn, bagpipe, oud, saz, sitar, kanun, "
            "ney flute, accordion, hurdy-gurdy, lyre, mandolin, gong, xylophone",
            material="spruce and maple, rosewood, brass, ebony and bone",
            era="medieval, renaissance, ottoman, baroque, folk", ornament="with inlaid rosettes, with carved scrolls",
            condition="new, well-played, antique"),
    _domain("landscapes", "landscapes and natural places", "scene",
            "mountain lake, alpine meadow, snowy peak, glacier, canyon, desert dunes, oasis, salt flat, "
            "volcanic coast, black sand beach, sea cliff, rocky shore, fjord, tundra, pine forest, birch forest, "
            "rainforest, bamboo forest, savanna, steppe, river valley, waterfall, hot spring, marsh, lagoon, "
            "coral reef, archipelago, rice terraces, vineyard, lavender field, wheat field, badlands, mesa, cave, "
            "ice cave, moor, misty hills, frozen lake, river delta, snowy forest clearing, fox den under roots",
            condition="untouched, wind-swept, snow-covered, sunlit, misty", scale="vast, intimate"),
    _domain("harbour", "a harbour, its boats and its quays", "scene",
            "stone quay with moored fishing boats, wooden pier, jetty, breakwater with a beacon, "
            "lighthouse at the harbour mouth, moored sailboats, rowboats pulled up on the slipway, "
            "stacked lobster pots, coiled ropes and bollards, harbour crane, boathouse, fish market hall, "
            "net sheds, bobbing buoys, marina pontoons, seawall, harbour steps down to the water, anchored trawler, "
            "ferry landing, gulls on mooring posts, harbour lantern, crates on the quay, still harbour water, "
            "harbour office with a clock, tide line on the harbour wall, drying nets on a rail, "
            "painted hulls reflected in the water, mooring chains green with weed, fuel pump on the quay, "
            "harbour master's hut, slipway with a winch, fish crates stacked by the market, mast tops in fog, "
            "anchors lined up on the quay, upturned dinghy on the shingle, lighthouse beam across the harbour",
            condition="calm, weathered, sunlit, fog-bound, rain-slicked", scale="small, empty"),
    _domain("alpine", "a snowy alpine mountain village and its chalets", "scene",
            "timber chalet with fretwork balconies, chalet roofs heavy with snow, onion-domed church steeple, "
            "village fountain frozen over, covered wooden bridge over a mountain stream, hay barn on the slope, "
            "woodpile stacked under the eaves, snowy lane between chalets, village inn with painted shutters, "
            "glowing bakery window, mountain hut above the village, chapel on a snowy knoll, frozen mill wheel, "
            "sawmill by the river, wooden fence half buried in snow, horse-drawn sleigh by the inn, "
            "smoking chimneys over the rooftops, bell tower against the peaks, village square with a decorated fir, "
            "lanterns along a snowy footpath, icicles along the eaves, stone water trough under snow, "
            "wayside shrine by the path, chalets terraced up the hillside, pine forest above the rooftops, "
            "footbridge over a frozen torrent, cheese dairy with wheels on wooden shelves, "
            "lamplit chalet window at dusk, cowbells hanging by a barn door, snowy orchard behind the houses, "
            "the village seen from the pass above, ski tracks leading down to the village",
            material="dark larch timber, whitewashed stone and timber, weathered spruce shingles, "
                     "stone ground floor and timber upper floors",
            era="centuries-old, traditional tyrolean, 19th-century swiss, bavarian alpine",
            ornament="with fretwork balcony rails, with painted window shutters, with hanging lanterns, "
                     "with frosted window boxes, with a painted gable",
            condition="freshly snowed in, deep in snow, under falling snow, frosted and sparkling",
            scale="tiny, huddled, tall"),
    _domain("coffee", "a cozy coffee shop, cafe interior and its corners", "scene",
            "espresso machine on the counter, barista counter with a row of cups, window seat with cushions and a latte, "
            "armchairs by a brick fireplace, shelves of coffee beans in glass jars, chalkboard menu above the counter, "
            "pastry display case, corner booth under a reading lamp, wooden tables by a rain-streaked window, "
            "hanging plants over an exposed brick wall, pour-over station on the bar, coffee roaster in the back room, "
            "bookshelf nook with a worn sofa, latte art on a tiled table, pendant lamps over a long communal table, "
            "record player on a shelf, steamy front window at night, terrace tables under a striped awning, "
            "stack of mismatched mugs, marble counter with a cake stand under a glass dome, "
            "spiral stair to a mezzanine of armchairs, cafe doorway with a bell, window ledge of potted herbs, "
            "coffee grinder and scales on the bar, mezzanine reading corner, bar stools along the window",
            material="reclaimed wood, exposed brick, green tiles, marble and brass, rattan and linen, dark walnut",
            era="scandinavian, parisian, vintage, industrial loft, art deco, mid-century",
            ornament="with fairy lights, with trailing plants, with vintage prints on the walls, "
                     "with mismatched chairs, with steam rising from cups",
            condition="cosy, early morning before opening, rainy afternoon, late evening lamplit",
            scale="tiny, narrow, airy"),
    _domain("desert", "a desert caravan, its camels, dunes and oases", "scene",
            "camel caravan on a dune crest, wind-rippled sand, oasis with date palms, caravanserai courtyard, "
            "nomad tents at dusk, well with a rope and bucket, saddle bags and woven rugs, campfire under the stars, "
            "wall of a sandstorm, mirage over the salt flats, rock arch in the desert, dry wadi bed, "
            "salt blocks bound on camels, lantern-lit tent interior, brass teapot on the coals, "
            "camel tracks in the sand, ruined desert fortress, camels kneeling at rest, "
            "harness bells and tasselled bridles, dune sea to the horizon, palm shade by a pool, "
            "canyon pass between red cliffs, water skins hung on a post, spice sacks at a trading post, "
            "stars over a sleeping camp",
            condition="sun-scorched, wind-swept, still, half buried in sand", scale="vast, lone, long"),
    _domain("lighthouse", "a lighthouse, its keeper's rooms and the sea around it", "scene",
            "lighthouse on a sea rock, lamp room with the great lens, spiral iron staircase inside the tower, "
            "keeper's cottage at the foot of the tower, oil store with brass cans, logbook open on a desk, "
            "kettle on a cast-iron stove, foghorn house, gallery rail around the lantern, "
            "waves breaking on the rocks below, supply boat landing, barometer and brass clock on the wall, "
            "window streaming with rain, beam sweeping over the dark sea, ship's lights far out at sea, "
            "wind-bent grass on the headland, coat and lantern on a hook, clockwork rotation machinery, "
            "narrow bunk under a porthole window, radio set crackling on a shelf, cliff path to the tower",
            condition="storm-lashed, wind-battered, salt-crusted, lamplit", scale="lone, towering, cramped"),
    _domain("winter_wood", "a winter woodland, snow, tracks and small wild animals", "scene",
            "fox den under snowy tree roots, fox tracks in fresh snow, snow-laden spruce, frozen stream under ice, "
            "hare in its white winter coat, vole tunnels under the snow, icicles on a fallen log, frosted bracken, "
            "birch grove in snow, moonlit forest clearing, blizzard over the meadow, thaw dripping from branches, "
            "rosehips crusted with frost, owl on a snowy branch, snowdrift against a stone wall, "
            "frozen pond with reeds, hollow oak trunk, first snowdrops in the thaw, drifting snowflakes in a beam of light, "
            "mouse tracks crossing a drift, hillside burrow mouth in snow",
            condition="fresh-fallen, frozen hard, softly snowing, thawing", scale="tiny, wide, hushed"),
    _domain("settlements", "villages, towns and streets", "scene",
            "village square, cobbled lane, market street, alpine village, fishing village, hill town, canal, "
            "bridge over a canal, rooftops and chimney pots, courtyard, colonial street, plaza with a fountain, "
            "bazaar, night market, train station, tram stop, alley with lanterns, snowy village church, "
            "timber chalets on a slope, village inn, windmill on the edge of town",
            condition="quiet, snow-covered, rain-washed, festive, abandoned", scale="tiny, sprawling"),
    _domain("interiors", "rooms and interiors", "scene",
            "coffee shop, reading nook, library, study, kitchen, attic, cellar, workshop, forge, apothecary shop, "
            "glasshouse interior, throne room, great hall, tavern, bedroom, parlour, conservatory, laboratory, "
            "observatory dome, chapel interior, bathhouse, tea room, bakery, bookshop, museum gallery, hotel lobby, "
            "train compartment, ship's cabin, lighthouse lamp room, spiral staircase, espresso bar counter, "
            "window seat with cushions, armchair by a fireplace, shelves of jars, chalkboard menu wall, "
            "pastry display case, brick wall with hanging plants",
            material="warm wood, exposed brick, tiled floor, velvet and brass",
            era="victorian, art deco, rustic, mid-century, scandinavian, industrial",
            condition="cosy, tidy, cluttered, dusty, lived-in", scale="tiny, grand"),
    _domain("space", "a space station and its modules", "scene",
            "hydroponics bay, station greenhouse module, long corridor with viewports, airlock, observation dome, "
            "command deck, crew quarters, docking ring, solar array outside the hull, reactor room, "
            "maintenance shaft, cargo hold, rotating habitat ring, garden of seedlings in trays, overgrown module, "
            "tomato vines climbing a bulkhead, moss on a cracked control panel, earthrise through a viewport, "
            "water recycler pipes dripping, seed vault drawers, grow lamps over lettuce racks, "
            "fern spilling out of a vent, watering can on a console, sunflower turned to a porthole, "
            "fruit tree in a sealed dome, roots through the floor grating, drifting leaves in low gravity",
            condition="abandoned, dimly lit, overgrown with plants, humming, flickering", scale="cramped, vast"),
    _domain("celestial", "celestial bodies and the night sky", "scene",
            "sun, crescent moon, full moon, comet, ringed planet, constellation, solar eclipse, spiral galaxy, "
            "nebula, meteor shower, aurora, milky way, supernova, star cluster, astrolabe, orrery, zodiac wheel, "
            "morning star, twin moons, lunar phases",
            era="medieval manuscript, art nouveau, tarot, renaissance star chart",
            ornament="with gold leaf, with fine linework, with stars and rays"),
    _domain("textures_stone", "stone, brick and masonry surfaces", "texture",
            "cobblestones, flagstones, dry stone wall, red brick wall, ashlar masonry, rubble wall, granite, marble, "
            "slate, sandstone, limestone blocks, basalt columns, pebbles, gravel, flint wall, travertine, "
            "terracotta roof tiles, concrete, plaster, stucco, mosaic floor",
            condition="clean, weathered, mossy, cracked, wet", scale="fine, coarse, large blocks",
            ornament="with lichen in the joints, with deep mortar lines, with worn edges, with scattered pebbles, "
                     "with moss in the cracks, with chisel marks",
            era="roman, medieval, victorian, rustic, modern"),
    _domain("textures_wood", "wood and timber surfaces", "texture",
            "oak planks, pine boards, walnut veneer, parquet floor, birch plywood, tree bark, driftwood, bamboo, "
            "teak decking, mahogany panel, cedar shingles, ebony, reclaimed barn wood, end grain blocks, "
            "herringbone wood floor, log wall",
            condition="freshly planed, weathered grey, painted and peeling, varnished, scorched",
            scale="narrow boards, wide planks",
            ornament="with knots and nail holes, with visible saw marks, with iron nails, with deep grain, "
                     "with worm holes, with tongue-and-groove joints",
            era="rustic, victorian, nautical, scandinavian, medieval"),
    _domain("textures_metal", "metal surfaces", "texture",
            "rusted iron plate, corrugated metal, diamond plate, brushed steel, copper with green patina, "
            "hammered brass, galvanised sheet, riveted hull plates, oxidised bronze, pitted cast iron, "
            "scratched aluminium, welded seams, metal grating, chain mail, tin ceiling tiles",
            condition="new, scratched, heavily rusted, oily, pitted", scale="fine, coarse",
            ornament="with rivets, with drips of rust, with flaking paint, with weld beads, with stencilled marks, "
                     "with dents",
            era="industrial, nautical, wartime, steampunk, dieselpunk"),
    _domain("textures_fabric", "woven fabrics and textiles", "texture",
            "woven linen, wool tweed, silk brocade, damask, velvet, denim, burlap, knitted wool, canvas, twill, "
            "herringbone weave, tartan plaid, houndstooth, felt, corduroy, jacquard, ikat, kilim weave, lace, "
            "basketweave, chenille, gingham, satin, muslin",
            condition="new, worn, crumpled, frayed", scale="fine weave, chunky weave",
            ornament="with a subtle stripe, with slub threads, with a woven border, with embroidered dots, "
                     "with a faded print",
            era="medieval, victorian, 1970s, folk, scandinavian"),
    _domain("textures_ground", "natural ground and surfaces", "texture",
            "moss, grass, sand, mud, snow, ice, lava rock, forest floor with leaves, dry cracked earth, "
            "wet pebbles, leather, suede, thatch, wicker, animal fur, reptile scales, tree moss, clay",
            condition="dry, wet, frozen, trampled", scale="fine, coarse"),
    _domain("geometric", "geometric and abstract patterns", "pattern",
            "hexagon grid, triangle tessellation, chevrons, herringbone, basketweave, houndstooth, "
            "concentric circles, checkerboard, diamond lattice, zigzags, stripes, polka dots, isometric cubes, "
            "penrose tiling, quatrefoil lattice, ogee pattern, trellis, greek key meander, honeycomb, fish scales, "
            "wave pattern, op art moire, interlocking rings, octagon and square tiling, star polygons, spirals, "
            "sunburst, art deco fan pattern",
            material="flat vector, risograph print, paper cut, screen print", era="art deco, bauhaus, 1970s, memphis"),
    _domain("fractals", "fractals and recursive forms", "pattern",
            "mandelbrot spiral, julia set, fern fractal, branching tree fractal, sierpinski triangle, "
            "koch snowflake, nautilus spiral, romanesco spiral, dendritic crystal, branching lightning, "
            "branching coral, recursive mandala, fibonacci spiral, kaleidoscope, flame fractal, vortex, "
            "nested spirals, feather fractal, river delta branching, frost pattern, labyrinth, "
            "self-similar shells, infinite zoom tunnel, fractal bloom",
            material="glowing filaments, liquid glass, molten metal, ink, light trails",
            ornament="with fine filigree detail, with iridescent edges, with deep recursion"),
)

# Palettes: words, temperature and the hue families they use. An intent that names colours keeps them: the
# planner only adds palettes that share one of its families (and its temperature, when it says one).
PALETTES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("warm amber and burnt orange", "warm", ("orange", "gold")), ("ochre and terracotta", "warm", ("orange", "brown")),
    ("deep crimson and gold", "warm", ("red", "gold")), ("sunset magenta and peach", "warm", ("pink", "orange")),
    ("copper and rust red", "warm", ("red", "orange", "brown")), ("honey gold and cream", "warm", ("gold", "white")),
    ("scarlet and charcoal", "warm", ("red", "black")), ("saffron and plum", "warm", ("gold", "purple")),
    ("rose gold and blush", "warm", ("pink", "gold")), ("brick red and olive", "warm", ("red", "green")),
    ("ice blue and silver", "cool", ("blue", "grey")), ("teal and slate", "cool", ("blue", "green", "grey")),
    ("cobalt and turquoise on white", "cool", ("blue", "white")), ("deep indigo and silver", "cool", ("blue", "grey")),
    ("cobalt, turquoise and coral red accents", "cool", ("blue", "red")),
    ("navy and pale sky blue", "cool", ("blue",)), ("emerald and jade", "cool", ("green",)),
    ("sage green and pewter", "cool", ("green", "grey")), ("violet and midnight blue", "cool", ("purple", "blue")),
    ("seafoam and pearl white", "cool", ("green", "white", "blue")),
    ("muted sage and cream", "neutral", ("green", "white")), ("monochrome charcoal", "neutral", ("black", "grey")),
    ("ivory and soft grey", "neutral", ("white", "grey")), ("sepia tones", "neutral", ("brown",)),
    ("black and gold", "neutral", ("black", "gold")), ("forest green and rust", "neutral", ("green", "red", "brown")),
    ("dusty rose and olive", "neutral", ("pink", "green")), ("weathered wood and moss green", "neutral", ("brown", "green")),
)

# Palettes that suit a domain when the intent names no colour (and, naming one, share its hue family):
# weapons in metal, leather and wood tones with one accent; a tile tradition in its own glaze colours.
DOMAIN_PALETTES: dict[str, tuple[tuple[str, str, tuple[str, ...]], ...]] = {
    "weapons": (
        ("forged steel grey and dark leather brown", "neutral", ("grey", "brown")),
        ("blackened iron and worn oak, with a crimson accent", "neutral", ("black", "brown", "red")),
        ("polished steel and walnut, with a brass accent", "neutral", ("grey", "brown", "gold")),
        ("aged bronze and oiled leather", "warm", ("brown", "gold")),
        ("gunmetal and ash wood, with a deep blue accent", "cool", ("grey", "brown", "blue")),
        ("burnished iron and tan rawhide, with a gold accent", "neutral", ("grey", "brown", "gold")),
        ("cold steel and charcoal, with an emerald accent", "cool", ("grey", "black", "green")),
        ("dark iron and weathered yew", "neutral", ("black", "brown")),
        ("silver steel and black leather, with a ruby accent", "neutral", ("grey", "black", "red")),
    ),
    "ornament_iznik": (
        ("cobalt and turquoise on white", "cool", ("blue", "white")),
        ("cobalt, turquoise and bole red on white", "cool", ("blue", "red", "white")),
        ("cobalt blue and sage green on white", "cool", ("blue", "green", "white")),
        ("deep cobalt on a white slip ground", "cool", ("blue", "white")),
        ("turquoise, cobalt and bole red with black outlines", "cool", ("blue", "red", "black")),
    ),
    "ornament_azulejo": (
        ("cobalt blue on white", "cool", ("blue", "white")),
        ("blue and yellow ochre on white", "neutral", ("blue", "gold", "white")),
        ("cobalt, ochre and manganese purple", "neutral", ("blue", "gold", "purple")),
        ("green and ochre on white", "neutral", ("green", "gold", "white")),
    ),
    "ornament_zellige": (
        ("emerald green, cobalt and white", "cool", ("green", "blue", "white")),
        ("ochre, black and white", "neutral", ("gold", "black", "white")),
        ("turquoise, honey and white", "neutral", ("blue", "gold", "white")),
        ("cobalt, terracotta and white", "neutral", ("blue", "brown", "white")),
    ),
    "ornament_delft": (
        ("delft blue on white", "cool", ("blue", "white")),
        ("manganese purple on white", "neutral", ("purple", "white")),
        ("soft cobalt on a bluish white glaze", "cool", ("blue", "white")),
    ),
    "ornament_talavera": (
        ("cobalt blue on white", "cool", ("blue", "white")),
        ("yellow, orange and cobalt on white", "warm", ("gold", "orange", "blue", "white")),
        ("cobalt, green and yellow on white", "neutral", ("blue", "green", "gold", "white")),
    ),
}
DOMAIN_PALETTES["armour"] = DOMAIN_PALETTES["weapons"]

# An intent naming a tile tradition draws its subjects from that tradition's domain only (none of the
# other traditions', nor the general ornament domain's).
TRADITION_WORDS: dict[str, str] = {
    **{w: "ornament_iznik" for w in _words("iznik, i̇znik, ottoman, osmanlı, çini, çinisi, turkish")},
    **{w: "ornament_azulejo" for w in _words("azulejo, azulejos, portuguese, lisbon, sevillian, seville")},
    **{w: "ornament_zellige" for w in _words("zellige, zellij, moroccan, morocco, fez, marrakech")},
    **{w: "ornament_delft" for w in _words("delft, delftware, dutch")},
    **{w: "ornament_talavera" for w in _words("talavera, mexican, puebla")},
}
TRADITION_DOMAINS = frozenset(TRADITION_WORDS.values())

# Scene domains that are indoors: a story there changes its light and mood, never its weather.
INDOOR_DOMAINS = frozenset(("coffee", "interiors", "space"))
INDOOR_WORDS = set(_words("interior, interiors, inside, indoor, indoors, room, rooms, station, spaceship, starship, "
                          "library, kitchen, cafe, café, shop, bedroom, attic, cellar, workshop, corridor, hall, "
                          "museum, tavern, inn, studio, office, classroom, greenhouse, bunker, vault"))
OUTDOOR_WORDS = set(_words("outdoor, outdoors, outside, garden, street, harbour, harbor, beach, forest, field, "
                           "mountain, village, sky, landscape, courtyard"))

# Props and creatures that recur through a story set in a scene domain (its places are not a cast).
SCENE_CAST: dict[str, tuple[str, ...]] = {
    "harbour": ("moored rowing boat", "herring gull", "harbour lantern"),
    "lighthouse": ("brass oil lamp", "herring gull"),
    "alpine": ("wooden sledge", "church bell"),
    "coffee": ("enamel coffee pot", "sleeping tabby cat"),
    "desert": ("laden camel", "brass lantern"),
    "winter_wood": ("red fox", "snow-laden lantern"),
    "space": ("maintenance droid", "floating tool case"),
    "interiors": ("oil lamp", "sleeping cat"),
    "castle": ("banner on a pole", "raven"),
    "settlements": ("handcart", "stray cat"),
    "landscapes": ("lone red deer", "weathered signpost"),
}


COLOUR_WORDS: dict[str, str] = {
    **{w: "blue" for w in _words("blue, blues, cobalt, azure, navy, indigo, sapphire, cyan, turquoise, teal, cerulean, "
                                 "ultramarine, iznik, mavi, bleu, blau, azul, blu")},
    **{w: "red" for w in _words("red, crimson, scarlet, ruby, vermilion, burgundy, maroon, kırmızı, rouge, rot, rojo, rosso, "
                                "vermelho, coral")},
    **{w: "orange" for w in _words("orange, amber, tangerine, apricot, turuncu, naranja, arancione, laranja, rust")},
    **{w: "gold" for w in _words("gold, golden, gilded, yellow, saffron, ochre, honey, altın, sarı, jaune, gelb, oro, "
                                 "amarillo, giallo, dourado, amarelo")},
    **{w: "green" for w in _words("green, emerald, jade, olive, sage, moss, mint, yeşil, vert, grün, verde")},
    **{w: "purple" for w in _words("purple, violet, lilac, lavender, plum, mor, violett, viola, roxo, morado")},
    **{w: "pink" for w in _words("pink, rose, blush, magenta, fuchsia, pembe, rosa")},
    **{w: "white" for w in _words("white, ivory, cream, pearl, beyaz, blanc, weiß, weiss, blanco, bianco, branco")},
    **{w: "black" for w in _words("black, ebony, jet, siyah, noir, schwarz, negro, nero, preto")},
    **{w: "grey" for w in _words("grey, gray, silver, pewter, charcoal, gri, gris, grau, grigio, cinza")},
    **{w: "brown" for w in _words("brown, sepia, umber, bronze, copper, kahverengi, marron, braun, marrón, marrone, marrom")},
}
WARM_WORDS = set(_words("warm, cosy, cozy, sunny, fiery, fire, autumn, autumnal, golden, sunset, ember, sıcak, chaud, "
                        "chaude, warme, warmen, cálido, cálida, caldo, calda, quente"))
COOL_WORDS = set(_words("cool, cold, icy, frozen, winter, wintry, frost, moonlit, night, soğuk, froid, froide, kalt, kalte, "
                        "frío, fría, freddo, fredda, frio, fria"))

# Lighting for scenes, by mood; an intent's mood words pick the list (MOOD_WORDS), else every list is used.
LIGHTING: dict[str, tuple[str, ...]] = {
    "warm": _words("golden hour light, warm lamplight, candlelight, firelight, late afternoon sun, amber glow of lanterns"),
    "calm": _words("soft overcast light, blue hour twilight, early morning mist, still dawn light, pale winter sun, "
                   "diffuse light through thin cloud"),
    "dark": _words("moonlight, fog and a single lamp, dramatic chiaroscuro, storm light, deep dusk, cold starlight"),
    "bright": _words("clear midday sun, crisp morning light, bright open shade, sparkling sunlight"),
}
MOOD_WORDS: dict[str, str] = {
    **{w: "warm" for w in WARM_WORDS},
    **{w: "calm" for w in _words("quiet, calm, serene, still, peaceful, tranquil, tranquille, gentle, sessiz, sakin, "
                                 "ruhig, ruhige, ruhiger, tranquilo, tranquila, calmo, calma, silencioso, misty, foggy")},
    **{w: "dark" for w in _words("dark, gloomy, eerie, haunted, ominous, night, moonlit, long night, gothic, karanlık, "
                                 "sombre, sombre, dunkel, dunkle, oscuro, oscura, scuro, escuro")},
    **{w: "bright" for w in _words("bright, cheerful, sunny, playful, cute, happy, joyful, vivid, parlak, neşeli")},
}

COMPOSITIONS = _words("wide establishing shot, rule of thirds, low angle looking up, high angle looking down, "
                      "framed through an archway, layered foreground and background, centered symmetrical composition, "
                      "diagonal leading lines, minimalist negative space, close-up on detail, panoramic vista, "
                      "medium shot")
LENSES = _words("35mm lens, 50mm lens, 24mm wide lens, 85mm lens, 135mm telephoto lens, 28mm lens")

FRAMINGS: dict[str, str] = {
    "asset": "isolated on a neutral background, orthographic, studio light",
    "texture": "seamless tileable texture, top-down, even light",
    "pattern": "flat front view, orthographic, even light",
}

# Words that say how the intent is to be shown (they win over a domain's own framing).
FRAMING_WORDS: dict[str, Framing] = {
    **{w: "texture" for w in _words("texture, textures, seamless, tileable, surface, surfaces, pbr, material, materials, "
                                    "doku, dokusu, textur, texturen, textura, texturas, trama")},
    **{w: "pattern" for w in _words("pattern, patterns, wallpaper, motif, motifs, tile, tiles, ornament, ornaments, "
                                    "desen, desenleri, desenler, çini, çinisi, karo, motif, muster, motivo, motivos, "
                                    "azulejo, azulejos, piastrelle, carreaux")},
    **{w: "asset" for w in _words("asset, assets, icon, icons, sprite, sprites, prop, props, item, items, inventory, "
                                  "sticker, stickers, kit, pack, product, products, game, token, tokens, card, cards")},
    **{w: "scene" for w in _words("scene, scenes, landscape, landscapes, view, vista, interior, interiors, harbour, "
                                  "harbor, street, village, story, manzara, paysage, landschaft, paisaje, paesaggio")},
}


def phrases() -> list[str]:
    """Every subject with every value of each attribute axis of its domain: the vocabulary's full span."""
    out: list[str] = []
    for domain in DOMAINS:
        for noun in domain.nouns:
            out.append(noun)
            for axis, values in domain.attributes.items():
                out += [f"{noun} {value}" if value.startswith("with ") or axis == "scale" and " " in value
                        else f"{value} {noun}" for value in values]
    return out


def subject_texts() -> list[str]:
    """One line per (domain, noun), embedded once for relevance: "longsword (medieval and fantasy weapons)"."""
    return [f"{noun} ({domain.label})" for domain in DOMAINS for noun in domain.nouns]


def subject_index() -> list[tuple[Domain, str]]:
    return [(domain, noun) for domain in DOMAINS for noun in domain.nouns]
