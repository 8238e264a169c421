"""One slug rule for project folders, artifact folders and scene slugs."""

from __future__ import annotations

from echo_os.artifacts.slugs import slugify
from echo_os.story.slug import slugify as scene_slugify


def test_folder_and_scene_slugs_follow_one_rule():
    for text in ("İskele'de sabah", "Crème brûlée à Øresund, Straße", "GROẞE Þing", "Çağrı Işık"):
        assert slugify(text, max_length=48) == scene_slugify(text)
    assert slugify("GROẞE Þing") == "grosse-thing"  # NFKD alone drops both letters
    assert slugify("snake_case Title") == "snake-case-title"  # folders: letters, digits and dashes
    assert scene_slugify("snake_case Title") == "snake_case-title"  # storyboard slugs keep `_`


def test_a_long_slug_is_cut_after_a_whole_word():
    assert slugify("abc-def-ghi", max_length=7) == "abc-def"
    assert slugify("abcdefghij", max_length=4) == "abcd"
    assert slugify("!!!", fallback="default") == "default"
