"""Training sees what inference sees: the core's ``load_ct`` refusals, the core's Dice/HD95, versioned phantom
caches and one progress printer."""

from __future__ import annotations


def test_phantom_cache_is_keyed_on_the_generator_version(tmp_path, monkeypatch):
    from CovidCTAnalysisLib.phantom import generator

    from training.phantom_cache import phantom_files

    now = phantom_files("normal", 3, tmp_path, spacing=9)
    assert f"_v{generator.PHANTOM_VERSION}_" in now.image.name
    before = now.image.stat().st_mtime_ns
    assert phantom_files("normal", 3, tmp_path, spacing=9).image == now.image  # reused while the version holds
    assert now.image.stat().st_mtime_ns == before

    # A newer generator must not read the older one's phantoms back: it makes (and names) its own.
    monkeypatch.setattr(generator, "PHANTOM_VERSION", generator.PHANTOM_VERSION + ".next")
    newer = phantom_files("normal", 3, tmp_path, spacing=9)
    assert newer.image != now.image and newer.truth != now.truth
    assert newer.image.is_file() and newer.truth.is_file()
    assert now.image.stat().st_mtime_ns == before  # the old files are left alone, never read as the new ones
