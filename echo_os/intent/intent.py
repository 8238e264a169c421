"""Split an intent into what to show (the theme) and what to keep out (exclusions for the negative prompt),
in the languages users write.

"warm fractal, no human forms" -> theme "warm fractal", exclusions ["human forms"]. A clause holding a
negator is an exclusion from that word on: English "no", "without", "avoid", "excluding", "never", "not";
French "sans", "pas de", "aucun(e)"; German "ohne", "kein(e/en/er)"; Spanish "sin", "ningún/ninguna";
Italian "senza", "niente", "nessun(a)"; Portuguese "sem", "nenhum(a)"; Turkish "olmadan" / "yok" after the
thing, and the suffix -siz/-sız/-suz/-süz on it ("insansız": without people).
"un port tranquille sans personne" -> theme "un port tranquille", exclusion "personne".

`english` is the intent read word by word through a small glossary of common visual words (GLOSSARY), so
MiniLM (an English model) can judge relevance; a word the glossary lacks is kept as written. Exclusions
are read the same way, and `EXCLUSION_GROUPS` widens an excluded concept to the words that show it
("human forms" -> people, figures, faces, portraits...): the planner picks the groups by MiniLM
similarity (offline.exclusion_terms) and keeps all their words out of the positives and in the negative.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_CLAUSES = re.compile(r"[,;\n]+")
_NEGATORS = ("no", "without", "avoid", "avoiding", "excluding", "exclude", "never", "not",  # English
             "sans", "pas de", "pas d'", "aucun", "aucune",  # French
             "ohne", "kein", "keine", "keinen", "keiner",  # German
             "sin", "ningún", "ninguna", "ningun",  # Spanish
             "senza", "niente", "nessun", "nessuna", "nessuno",  # Italian
             "sem", "nenhum", "nenhuma")  # Portuguese
_EXCLUSION = re.compile(r"(?:^|\s)(?:" + "|".join(re.escape(n) for n in sorted(_NEGATORS, key=len, reverse=True))
                        + r")(?:\s+|(?<='))(.+)$", re.IGNORECASE)
_TURKISH_AFTER = re.compile(r"^(.+?)\s+(?:olmadan|olmayan|yok)$", re.IGNORECASE)
_TURKISH_SUFFIX = re.compile(r"^(\w{3,}?)(?:s[ıiuü]z)(?:d[ıiuü]r)?$", re.IGNORECASE)
_WORD = re.compile(r"[^\W\d_][\w'-]{2,}")
_STOP = {"the", "and", "any", "with", "for", "from", "forms", "form", "kind", "kinds", "type", "types", "things",
         "des", "les", "une", "der", "die", "das", "den", "del", "las", "los", "della", "delle", "dos"}

# Common visual words of French, German, Spanish, Italian, Portuguese and Turkish, in English (lower case).
GLOSSARY: dict[str, str] = {
    # people (mostly excluded) and bodies
    "personne": "people", "personnes": "people", "gens": "people", "humain": "human", "humains": "humans",
    "visage": "face", "visages": "faces", "menschen": "people", "mensch": "person", "person": "person",
    "personen": "people", "gesicht": "face", "gesichter": "faces", "figur": "figure", "figuren": "figures",
    "gente": "people", "personas": "people", "persona": "person", "humano": "human", "humanos": "humans",
    "rostro": "face", "cara": "face", "persone": "people", "umano": "human", "umani": "humans", "volto": "face",
    "volti": "faces", "pessoas": "people", "pessoa": "person", "rosto": "face", "insan": "people",
    "insanlar": "people", "figür": "figure", "figürü": "figure", "figürleri": "figures", "yüz": "face",
    "kişi": "person", "adam": "man", "kadın": "woman", "çocuk": "child", "enfant": "child",     "niño": "child", "bambino": "child", "criança": "child",
    # places and buildings
    "port": "harbour", "porto": "harbour", "puerto": "harbour", "hafen": "harbour", "liman": "harbour",
    "limanı": "harbour", "burg": "castle", "schloss": "castle", "château": "castle", "castillo": "castle",
    "castello": "castle", "castelo": "castle", "kale": "castle", "kalesi": "castle", "maison": "house",
    "maisons": "houses", "haus": "house", "häuser": "houses", "casa": "house", "casas": "houses",     "ev": "house", "evler": "houses", "village": "village", "dorf": "village", "pueblo": "village",
    "villaggio": "village", "aldeia": "village", "köy": "village", "ville": "town", "stadt": "town",
    "ciudad": "town", "città": "town", "cidade": "town", "şehir": "town", "rue": "street", "straße": "street",
    "calle": "street", "strada": "street", "rua": "street", "sokak": "street", "église": "church",
    "kirche": "church", "iglesia": "church", "chiesa": "church", "igreja": "church", "cami": "mosque",
    "camii": "mosque", "turm": "tower", "torre": "tower", "kule": "tower", "pont": "bridge",
    "brücke": "bridge", "puente": "bridge", "ponte": "bridge", "köprü": "bridge", "jardin": "garden",
    "garten": "garden", "jardín": "garden", "giardino": "garden", "jardim": "garden", "bahçe": "garden",
    "forêt": "forest", "wald": "forest", "bosque": "forest", "bosco": "forest", "floresta": "forest",
    "orman": "forest", "montagne": "mountain", "berg": "mountain", "montaña": "mountain", "montagna": "mountain",
    "montanha": "mountain", "dağ": "mountain", "mer": "sea", "meer": "sea", "mar": "sea",     "deniz": "sea", "plage": "beach", "playa": "beach", "spiaggia": "beach", "praia": "beach",
    "sahil": "coast", "plaj": "beach", "désert": "desert", "wüste": "desert", "desierto": "desert",
    "deserto": "desert", "çöl": "desert", "lac": "lake", "lago": "lake", "göl": "lake",
    "rivière": "river", "fluss": "river", "río": "river", "fiume": "river", "rio": "river", "nehir": "river",
    "île": "island", "insel": "island", "isla": "island", "isola": "island", "ilha": "island", "ada": "island",
    "phare": "lighthouse", "leuchtturm": "lighthouse", "faro": "lighthouse", "farol": "lighthouse",
    "fener": "lighthouse", "bateau": "boat", "bateaux": "boats", "boot": "boat", "boote": "boats",
    "barco": "boat", "barcos": "boats", "barca": "boat", "barche": "boats", "tekne": "boat", "gemi": "ship",
    "navire": "ship", "schiff": "ship", "quai": "quay", "kasaba": "town", "kasabası": "town",
    # things and materials
    "armes": "weapons", "arme": "weapon", "waffen": "weapons", "waffe": "weapon", "armas": "weapons",
    "arma": "weapon", "armi": "weapons", "silah": "weapon", "silahlar": "weapons", "silahları": "weapons",
    "épée": "sword", "schwert": "sword", "espada": "sword", "spada": "sword", "kılıç": "sword",
    "bouclier": "shield", "schild": "shield", "escudo": "shield", "scudo": "shield", "kalkan": "shield",
    "vase": "vase", "vases": "vases", "vaso": "vase", "vasi": "vases", "jarrón": "vase", "vaza": "vase",
    "céramique": "ceramic", "keramik": "ceramic", "cerámica": "ceramic", "ceramica": "ceramic",
    "cerâmica": "ceramic", "seramik": "ceramic", "çini": "tiles", "çinisi": "tiles",
    "çiniler": "tiles", "karo": "tile", "karolar": "tiles", "carreaux": "tiles", "fliesen": "tiles",
    "azulejos": "tiles", "piastrelle": "tiles", "desen": "pattern", "desenleri": "patterns", "desenler": "patterns",
    "motifs": "motifs", "muster": "pattern", "motivo": "motif", "motivos": "motifs", "motivi": "motifs",
    "décorations": "decorations", "dekoration": "decoration", "decoraciones": "decorations",
    "decorazioni": "decorations", "decorações": "decorations", "süsleme": "ornament", "fleurs": "flowers",
    "fleur": "flower", "blumen": "flowers", "blume": "flower", "flores": "flowers", "flor": "flower",
    "fiori": "flowers", "fiore": "flower", "çiçek": "flower", "çiçekler": "flowers", "floreali": "floral",
    "floreale": "floral", "florales": "floral", "floral": "floral", "florais": "floral", "florale": "floral",
    "floraux": "floral", "blut": "blood", "sangre": "blood", "sangue": "blood", "kan": "blood",
    "texte": "text", "text": "text", "texto": "text", "testo": "text", "yazı": "text", "voitures": "cars",
    "voiture": "car", "autos": "cars", "auto": "car", "coches": "cars", "coche": "car", "macchine": "cars",
    "carros": "cars", "carro": "car", "araba": "car", "arabalar": "cars", "arbres": "trees", "bäume": "trees",
    "árboles": "trees", "alberi": "trees", "árvores": "trees", "ağaç": "tree", "ağaçlar": "trees",
    "animaux": "animals", "tiere": "animals", "animales": "animals", "animali": "animals", "animais": "animals",
    "hayvan": "animal", "hayvanlar": "animals", "bois": "wood", "holz": "wood", "madera": "wood", "legno": "wood",
    "madeira": "wood", "ahşap": "wood", "pierre": "stone", "stein": "stone", "piedra": "stone", "pietra": "stone",
    "pedra": "stone", "taş": "stone", "métal": "metal", "metall": "metal", "metallo": "metal", "metal": "metal",
    # qualities
    "tranquille": "quiet", "calme": "calm", "ruhig": "quiet", "ruhige": "quiet", "ruhiger": "quiet",
    "tranquilo": "quiet", "tranquila": "quiet", "tranquillo": "quiet", "calmo": "calm", "sessiz": "quiet",
    "sakin": "calm", "mittelalterlich": "medieval", "mittelalterliche": "medieval", "mittelalterlicher": "medieval",
    "médiéval": "medieval", "médiévale": "medieval", "médiévales": "medieval", "medieval": "medieval",
    "medievales": "medieval", "medievale": "medieval", "medievali": "medieval", "medievais": "medieval",
    "ortaçağ": "medieval", "coloniales": "colonial", "coloniais": "colonial", "coloniale": "colonial",
    "coloniali": "colonial", "koloniale": "colonial", "ancien": "old", "ancienne": "old", "alte": "old",
    "antiguo": "old", "antigua": "old", "antico": "old", "antiga": "old", "eski": "old",
    "sisli": "foggy", "brumeux": "foggy", "neblig": "foggy", "nebuloso": "foggy", "nebbioso": "foggy",
    "nuit": "night", "nacht": "night", "noche": "night", "notte": "night", "noite": "night", "gece": "night",
    "hiver": "winter", "kış": "winter", "invierno": "winter", "inverno": "winter", "süslü": "ornate",
    "orné": "ornate", "ornées": "ornate", "verziert": "ornate", "adornado": "ornate", "ornato": "ornate",
    "enfeitado": "ornate", "sombre": "dark", "dunkel": "dark", "oscuro": "dark", "scuro": "dark", "escuro": "dark",
}

# An excluded concept and the words that show it; offline.exclusion_terms picks the groups whose words
# are nearest (MiniLM) to what was excluded, and every word of a picked group is kept out of the positives.
EXCLUSION_GROUPS: dict[str, tuple[str, ...]] = {
    "people": ("people", "human figure", "face", "portrait", "crowd", "person", "persons", "human", "humans",
               "figure", "figures", "faces", "portraits", "body", "bodies", "hands", "crowd", "child", "children", "man",
               "men", "woman", "women", "fisherman", "fishermen", "sailor", "sailors", "keeper", "humanoid",
               "android", "character", "characters", "silhouette", "mannequin", "dress form", "mermaid", "statue"),
    "text": ("text", "letters", "lettering", "words", "writing", "label", "labels", "signature", "watermark",
             "logo", "caption", "typography", "inscription", "numbers", "menu", "map", "scroll"),
    "blood": ("blood", "bloody", "gore", "wounds", "wound", "injury", "corpse", "death", "skull", "bones"),
    "vehicles": ("car", "cars", "vehicle", "vehicles", "truck", "traffic", "bus", "motorcar", "automobile",
                 "road", "roads", "parking", "tram", "train", "motorcycle"),
    "flowers": ("flower", "flowers", "floral", "blossom", "blossoms", "petal", "petals", "bloom", "rose", "tulip",
                "lotus", "carnation", "peony", "lily", "iris", "bouquet", "garland", "hyacinth", "poppy", "daisy"),
    "animals": ("animal", "animals", "bird", "birds", "gull", "gulls", "dog", "cat", "horse", "fish", "creature",
                "creatures", "insect", "fox", "owl"),
    "weapons": ("weapon", "weapons", "sword", "gun", "knife", "axe", "spear", "bow", "dagger", "blade"),
    "modern": ("modern", "plastic", "electric wires", "power lines", "neon", "phone", "screen", "concrete"),
    "water": ("water", "sea", "lake", "river", "wave", "waves", "rain"),
    "buildings": ("building", "buildings", "house", "houses", "tower", "city", "skyline", "architecture"),
}


@dataclass(frozen=True)
class Intent:
    text: str
    theme: str
    exclusions: tuple[str, ...]
    excluded_terms: tuple[str, ...] = field(default=())  # the exclusions' concepts, widened (offline.exclusion_terms)

    @property
    def english(self) -> str:
        """The theme read through the glossary (for MiniLM, which reads English)."""
        return to_english(self.theme)

    @property
    def negative_prompt(self) -> str:
        """The exclusions as written, then the concepts they name in English (the model reads English)."""
        # A few words of each widened concept: the negative prompt has the same 77-token budget as the positive.
        parts = list(self.exclusions) + [to_english(e) for e in self.exclusions] + list(self.excluded_terms[:5])
        return ", ".join(dict.fromkeys(part for part in parts if part.strip()))

    def excluded_words(self) -> set[str]:
        """Content words of the exclusions, their English and the widened terms (singular and plural)."""
        words: set[str] = set()
        for exclusion in (*self.exclusions, *(to_english(e) for e in self.exclusions), *self.excluded_terms):
            for word in _WORD.findall(exclusion.lower()):
                if word in _STOP:
                    continue
                stem = word[:-1] if word.endswith("s") and len(word) > 3 else word
                words |= {stem, stem + "s", word}
        return words

    def mentions_excluded(self, text: str) -> bool:
        excluded = self.excluded_words()
        return any(word in excluded for word in _WORD.findall(text.lower()))


def to_english(text: str) -> str:
    """Each word the glossary knows replaced by its English; the rest kept."""
    return re.sub(r"[^\W\d_][\w'-]*", lambda m: GLOSSARY.get(m.group(0).lower(), m.group(0)), text)


def _clauses(text: str) -> list[str]:
    """Split on , ; and newlines outside Dynamic Prompts braces ({a, b|c} stays one clause)."""
    clauses: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        depth += char == "{"
        depth -= char == "}" and depth > 0
        if depth == 0 and _CLAUSES.fullmatch(char):
            clauses.append("".join(current))
            current = []
        else:
            current.append(char)
    clauses.append("".join(current))
    return clauses


def _turkish(clause: str) -> tuple[str, list[str]]:
    """(the clause without its Turkish exclusions, the exclusions): "X olmadan", "X yok", "Xsız"."""
    match = _TURKISH_AFTER.match(clause)
    if match:
        return "", [match.group(1).strip()]
    kept, excluded = [], []
    for word in clause.split():
        suffix = _TURKISH_SUFFIX.match(word)
        if suffix and suffix.group(1).lower() in GLOSSARY:  # "insansız" yes; "sessiz" (quiet) is a word of its own
            excluded.append(suffix.group(1))
        else:
            kept.append(word)
    return " ".join(kept), excluded


def _split_list(text: str) -> list[str]:
    return [part.strip() for part in re.split(r"\s+(?:or|and|ou|et|oder|und|o|y|e|ni|veya|ve)\s+", text)
            if part.strip()]


def parse_intent(text: str) -> Intent:
    theme_parts: list[str] = []
    exclusions: list[str] = []
    for clause in _clauses(text):
        clause = clause.strip()
        if not clause:
            continue
        clause, turkish = _turkish(clause)
        exclusions += turkish
        match = _EXCLUSION.search(clause) if clause else None
        if match:
            before = clause[: match.start()].strip()
            if before:
                theme_parts.append(before)
            exclusions.extend(_split_list(match.group(1)))
        elif clause:
            theme_parts.append(clause)
    return Intent(text=text, theme=", ".join(theme_parts), exclusions=tuple(dict.fromkeys(exclusions)))
