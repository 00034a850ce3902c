"""core.config: defaults, presets, inline styles, and every validation rule with its key path."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import PurePosixPath
from typing import Any

import pytest

from mh_watchd.core.api import Style
from mh_watchd.core.config import (
    DEFAULT_NOTIFY_ON,
    Config,
    Preset,
    parse,
)
from mh_watchd.core.errors import ConfigError
from mh_watchd.core.naming import style_slug

P = PurePosixPath
SECRET = "mhk_live_Zq8sEcReT0000"


def minimal() -> dict[str, Any]:
    """One folder with an inline style: the smallest valid config."""
    return {
        "folder": [
            {
                "name": "anime",
                "inbox": "/m/anime/in",
                "outbox": "/m/anime/out",
                "style": {"art_style": "Oil Painting"},
            }
        ]
    }


def two_folders() -> dict[str, Any]:
    raw = minimal()
    raw["styles"] = {"ghibli": {"art_style": "Studio Ghibli"}}
    raw["folder"].append(
        {"name": "paint", "inbox": "/m/paint/in", "outbox": "/m/paint/out", "style": "ghibli"}
    )
    return raw


def patched(base: dict[str, Any], *changes: tuple[tuple[str | int, ...], Any]) -> dict[str, Any]:
    """A deep copy of `base` with each (key path, value) set; missing tables are created."""
    raw = copy.deepcopy(base)
    for keys, value in changes:
        node: Any = raw
        for key in keys[:-1]:
            if isinstance(key, str) and key not in node:
                node[key] = {}
            node = node[key]
        node[keys[-1]] = value
    return raw


def problems_of(raw: dict[str, Any], **kwargs: Any) -> list[str]:
    with pytest.raises(ConfigError) as excinfo:
        parse(raw, **kwargs)
    return excinfo.value.problems


# --- valid configs ----------------------------------------------------------------------


def test_minimal_config_gets_every_documented_default() -> None:
    config = parse(minimal())
    api, daemon, folder = config.api, config.daemon, config.folders[0]
    assert (api.base_url, api.token_env, api.token_file) == (
        "https://api.magichour.ai",
        "MAGIC_HOUR_API_KEY",
        None,
    )
    assert (api.request_timeout_seconds, api.poll_interval_seconds) == (60.0, 10.0)
    assert api.render_timeout_minutes == 180.0
    assert daemon.state_dir == P("/var/lib/mh-watchd")
    assert (daemon.max_parallel_uploads, daemon.max_active_renders) == (2, 4)
    assert (daemon.daily_credit_limit, daemon.settle_seconds, daemon.rescan_seconds) == (0, 10, 300)
    assert (daemon.observer, daemon.log_format) == ("auto", "auto")
    assert (daemon.http_listen, daemon.umask) == ("127.0.0.1:9309", 0o002)
    assert daemon.history_days == 365
    assert folder.archive == P("/m/anime/in/.mh-done")
    assert folder.failed == P("/m/anime/in/.mh-failed")
    assert folder.style == Style(art_style="Oil Painting")
    assert folder.style_name is None
    assert (folder.fps_resolution, folder.start_seconds, folder.max_seconds) == ("HALF", 0, 60)
    assert (folder.recursive, folder.on_success, folder.observer) == (False, "archive", "auto")
    assert (folder.settle_seconds, folder.ready_marker, folder.min_size_bytes) == (10.0, "", 1)
    assert (folder.include, folder.exclude) == ((), ())
    assert (folder.require_mount, folder.mount_marker) == (False, "")
    assert config.notify.on == DEFAULT_NOTIFY_ON == {"failed", "held", "outage"}
    assert (config.notify.webhook_url, config.notify.apprise_urls) == ("", ())
    assert config.warnings == ()


def test_folder_inherits_daemon_settle_and_observer() -> None:
    raw = patched(minimal(), (("daemon", "settle_seconds"), 3), (("daemon", "observer"), "polling"))
    folder = parse(raw).folders[0]
    assert (folder.settle_seconds, folder.observer) == (3.0, "polling")
    raw = patched(
        raw, (("folder", 0, "settle_seconds"), 0.5), (("folder", 0, "observer"), "native")
    )
    folder = parse(raw).folders[0]
    assert (folder.settle_seconds, folder.observer) == (0.5, "native")


def test_preset_values_apply_and_folder_keys_override_them() -> None:
    raw = patched(
        minimal(),
        (("styles", "paint"), {"art_style": "Van Gogh", "model": "Dreamshaper"}),
        (("styles", "paint", "fps_resolution"), "FULL"),
        (("styles", "paint", "max_seconds"), 30),
        (("styles", "paint", "start_seconds"), 2.5),
        (("folder", 0, "style"), "Paint"),  # preset names match case-insensitively
        (("folder", 0, "max_seconds"), 10),
    )
    config = parse(raw)
    folder = config.folders[0]
    assert folder.style == Style(art_style="Van Gogh", model="Dreamshaper")
    assert folder.style_name == "paint"
    assert (folder.fps_resolution, folder.start_seconds, folder.max_seconds) == ("FULL", 2.5, 10)
    assert config.styles["paint"] == Preset(
        name="paint",
        style=Style(art_style="Van Gogh", model="Dreamshaper"),
        fps_resolution="FULL",
        start_seconds=2.5,
        max_seconds=30.0,
    )


def test_inline_style_with_prompt_and_trims() -> None:
    style = {
        "art_style": "Cyberpunk",
        "prompt": "neon rain",
        "prompt_type": "append_default",
        "fps_resolution": "FULL",
        "max_seconds": 0,
    }
    folder = parse(patched(minimal(), (("folder", 0, "style"), style))).folders[0]
    assert folder.style == Style(
        art_style="Cyberpunk", prompt="neon rain", prompt_type="append_default"
    )
    assert (folder.style_name, folder.fps_resolution, folder.max_seconds) == (None, "FULL", 0)


def test_with_preset_swaps_the_style_but_keeps_the_folders_own_keys() -> None:
    raw = patched(
        two_folders(),
        (("styles", "fast"), {"art_style": "Lego", "fps_resolution": "FULL", "max_seconds": 5}),
        (("folder", 1, "max_seconds"), 20),
    )
    config = parse(raw)
    folder = config.folders[1]
    fast = config.preset("FAST")
    assert fast is not None
    routed = folder.with_preset(fast)
    assert (routed.style.art_style, routed.style_name) == ("Lego", "fast")
    assert (routed.fps_resolution, routed.max_seconds) == ("FULL", 20.0)
    assert (routed.inbox, routed.outbox) == (folder.inbox, folder.outbox)


def test_lookup_helpers_and_immutability() -> None:
    config = parse(two_folders())
    assert config.folder("paint") is config.folders[1]
    assert config.folder("PAINT") is None
    assert config.preset("GhIbLi") is config.styles["ghibli"]
    assert config.preset("nope") is None
    assert hash(config) == hash(parse(two_folders()))
    assert config == parse(two_folders())
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.folders[0].inbox = P("/elsewhere")  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.styles["x"] = config.styles["ghibli"]  # type: ignore[index]


def test_relative_paths_resolve_against_base_dir_and_dotdot_collapses() -> None:
    raw = patched(
        minimal(),
        (("folder", 0, "inbox"), "media/in"),
        (("folder", 0, "outbox"), "/m/x/../out/./"),
        (("daemon", "state_dir"), "state"),
        (("api", "token_file"), "../token"),
    )
    config = parse(raw, base_dir=P("/etc/mh-watchd"))
    assert config.folders[0].inbox == P("/etc/mh-watchd/media/in")
    assert config.folders[0].outbox == P("/m/out")
    assert config.folders[0].archive == P("/etc/mh-watchd/media/in/.mh-done")
    assert config.daemon.state_dir == P("/etc/mh-watchd/state")
    assert config.api.token_file == P("/etc/token")


@pytest.mark.parametrize(
    ("changes", "field", "expected"),
    [
        ([(("daemon", "umask"), "0022")], "umask", 0o022),
        ([(("daemon", "umask"), "0o027")], "umask", 0o027),
        ([(("daemon", "umask"), 0o007)], "umask", 0o007),
        ([(("daemon", "umask"), "0")], "umask", 0),
        ([(("daemon", "http_listen"), "")], "http_listen", ""),
        ([(("daemon", "http_listen"), "[::1]:9000")], "http_listen", "[::1]:9000"),
        (
            [(("daemon", "http_listen"), "0.0.0.0:65535"), (("daemon", "http_token"), "t" * 16)],
            "http_listen",
            "0.0.0.0:65535",
        ),
        ([(("daemon", "http_listen"), "localhost:9000")], "http_token", ""),
        ([(("daemon", "http_listen"), "127.0.0.2:9000")], "http_token", ""),
        (
            [(("api", "base_url"), "http://127.0.0.1:8080/p/")],
            "base_url",
            "http://127.0.0.1:8080/p",
        ),
        ([(("daemon", "settle_seconds"), 0)], "settle_seconds", 0.0),
        ([(("daemon", "daily_credit_limit"), 5000)], "daily_credit_limit", 5000),
        ([(("daemon", "history_days"), 0)], "history_days", 0),
        ([(("daemon", "history_days"), 30)], "history_days", 30),
    ],
)
def test_accepted_values(
    changes: list[tuple[tuple[str, ...], Any]], field: str, expected: object
) -> None:
    config = parse(patched(minimal(), *changes))
    section = config.api if field == "base_url" else config.daemon
    assert getattr(section, field) == expected


def test_shared_outbox_and_hidden_outputs_in_own_inbox_are_allowed() -> None:
    raw = patched(
        two_folders(),
        (("folder", 1, "outbox"), "/m/anime/out"),
        (("folder", 0, "archive"), "/m/anime/in/.done"),
        (("folder", 0, "failed"), "/m/anime/in/sub/.failed"),
    )
    config = parse(raw)
    assert config.folders[0].outbox == config.folders[1].outbox
    assert config.folders[0].failed == P("/m/anime/in/sub/.failed")


def test_notify_section() -> None:
    raw = patched(
        minimal(),
        (("notify",), {"webhook_url": "https://hooks.example/mh", "on": ["done", "failed"]}),
        (("notify", "apprise_urls"), ["ntfy://mh"]),
    )
    notify = parse(raw).notify
    assert (notify.webhook_url, notify.apprise_urls) == ("https://hooks.example/mh", ("ntfy://mh",))
    assert notify.on == {"done", "failed"}


# --- Studio Ghibli ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "sent", "warnings"),
    [
        (None, "v2", []),
        ("default", "v2", []),
        ("v2", "v2", []),
        (
            "v1",
            "v1",
            [
                "styles.ghibli.version: 'v1' with Studio Ghibli: the service documents only 'v2' "
                "for it; leave version unset to send 'v2'"
            ],
        ),
    ],
)
def test_ghibli_sends_v2_unless_told_otherwise_with_a_warning(
    version: str | None, sent: str, warnings: list[str]
) -> None:
    raw = two_folders()
    if version is not None:
        raw["styles"]["ghibli"]["version"] = version
    config = parse(raw)
    assert config.folders[1].style.version == sent
    assert list(config.warnings) == warnings


def test_other_art_styles_keep_version_default() -> None:
    assert parse(minimal()).folders[0].style.version == "default"


def test_warnings_travel_with_problems() -> None:
    raw = patched(
        two_folders(), (("styles", "ghibli", "version"), "v1"), (("daemon", "umask"), "x")
    )
    with pytest.raises(ConfigError) as excinfo:
        parse(raw)
    assert excinfo.value.problems == [
        'daemon.umask: must be an octal string like "0002" or "0022" (at most 0777)'
    ]
    assert len(excinfo.value.warnings) == 1
    assert excinfo.value.warnings[0].startswith("styles.ghibli.version: 'v1' with Studio Ghibli")


# --- every rule, one exact message each -----------------------------------------------------

F0 = ("folder", 0)
F1 = ("folder", 1)
Change = tuple[tuple[str | int, ...], Any]
Rule = tuple[str, dict[str, Any], list[Change], str]


def daemon_rule(name: str, key: str, value: object, expected: str) -> Rule:
    return (name, minimal(), [(("daemon", key), value)], expected)


RULES: list[Rule] = [
    # unknown keys, with did-you-mean
    ("unknown_top", minimal(), [(("deamon",), {})], "deamon: unknown key; did you mean 'daemon'?"),
    (
        "unknown_folder",
        minimal(),
        [((*F0, "recursve"), True)],
        "folder[0].recursve: unknown key; did you mean 'recursive'?",
    ),
    (
        "unknown_api",
        minimal(),
        [(("api", "poll_interval"), 5)],
        "api.poll_interval: unknown key; did you mean 'poll_interval_seconds'?",
    ),
    (
        "unknown_style_key",
        minimal(),
        [((*F0, "style", "ArtStyle"), "Clay")],
        "folder[0].style.ArtStyle: unknown key; did you mean 'art_style'?",
    ),
    (
        "unknown_notify_no_guess",
        minimal(),
        [(("notify", "zzz"), 1)],
        "notify.zzz: unknown key; expected one of: webhook_url, apprise_urls, on",
    ),
    # secrets in the file
    (
        "api_token",
        minimal(),
        [(("api", "token"), SECRET)],
        "api.token: put the key in token_file or the environment, never in the config",
    ),
    (
        "top_api_key",
        minimal(),
        [(("api_key",), SECRET)],
        "api_key: put the key in token_file or the environment, never in the config",
    ),
    (
        "token_env_holds_key",
        minimal(),
        [(("api", "token_env"), SECRET)],
        "api.token_env: looks like an API key; token_env names an environment variable that "
        "holds the key (put the key in token_file or the environment, never in the config)",
    ),
    (
        "token_env_not_a_name",
        minimal(),
        [(("api", "token_env"), "MY KEY")],
        "api.token_env: must be an environment variable name like MAGIC_HOUR_API_KEY",
    ),
    # folder layout
    (
        "shared_inbox",
        two_folders(),
        [((*F1, "inbox"), "/m/anime/in/")],
        "folder[1].inbox: same inbox as folder[0] ('anime'): /m/anime/in",
    ),
    (
        "inbox_in_inbox",
        two_folders(),
        [((*F1, "inbox"), "/m/anime/in/deep/er")],
        "folder[1].inbox: /m/anime/in/deep/er is inside the inbox of folder[0] ('anime') "
        "(/m/anime/in); inboxes must not overlap",
    ),
    (
        "inbox_contains_inbox",
        two_folders(),
        [((*F0, "inbox"), "/m"), ((*F0, "outbox"), "/o"), ((*F1, "outbox"), "/p")],
        "folder[1].inbox: /m/paint/in is inside the inbox of folder[0] ('anime') (/m); "
        "inboxes must not overlap",
    ),
    (
        "outbox_in_own_inbox",
        minimal(),
        [((*F0, "outbox"), "/m/anime/in/out")],
        "folder[0].outbox: /m/anime/in/out is inside the inbox of folder[0] ('anime') "
        "(/m/anime/in); its files would be taken as inputs: put it outside every inbox (or "
        "under a hidden name like .mh-done in this folder's own inbox)",
    ),
    (
        "outbox_is_own_inbox",
        minimal(),
        [((*F0, "outbox"), "/m/anime/in")],
        "folder[0].outbox: /m/anime/in is inside the inbox of folder[0] ('anime') "
        "(/m/anime/in); its files would be taken as inputs: put it outside every inbox (or "
        "under a hidden name like .mh-done in this folder's own inbox)",
    ),
    (
        "archive_in_other_inbox",
        two_folders(),
        [((*F1, "archive"), "/m/anime/in/done")],
        "folder[1].archive: /m/anime/in/done is inside the inbox of folder[0] ('anime') "
        "(/m/anime/in); its files would be taken as inputs: put it outside every inbox (or "
        "under a hidden name like .mh-done in this folder's own inbox)",
    ),
    (
        "hidden_failed_in_other_inbox",
        two_folders(),
        [((*F1, "failed"), "/m/anime/in/.failed")],
        "folder[1].failed: /m/anime/in/.failed is inside the inbox of folder[0] ('anime') "
        "(/m/anime/in); its files would be taken as inputs: put it outside every inbox (or "
        "under a hidden name like .mh-done in this folder's own inbox)",
    ),
    (
        "inbox_in_outbox",
        two_folders(),
        [((*F1, "inbox"), "/m/anime/out/again")],
        "folder[1].inbox: /m/anime/out/again is inside the outbox of folder[0] ('anime') "
        "(/m/anime/out); files the daemon writes there could be taken as inputs",
    ),
    (
        "state_dir_in_inbox",
        minimal(),
        [(("daemon", "state_dir"), "/m/anime/in/state")],
        "daemon.state_dir: /m/anime/in/state is inside the inbox of folder[0] ('anime') "
        "(/m/anime/in); put it outside every inbox, e.g. /var/lib/mh-watchd",
    ),
    # folders: presence, names
    ("no_folder", {}, [], "folder: at least one [[folder]] is required"),
    ("empty_folder_list", {"folder": []}, [], "folder: at least one [[folder]] is required"),
    (
        "folder_as_table",
        {"folder": {"name": "x"}},
        [],
        "folder: must be an array of tables: write [[folder]], not [folder]",
    ),
    (
        "bad_name",
        minimal(),
        [((*F0, "name"), "My Videos")],
        "folder[0].name: 'My Videos' must be 1-40 characters: lowercase letters, digits, '-' "
        "and '_', starting with a letter or digit",
    ),
    (
        "uppercase_name",
        minimal(),
        [((*F0, "name"), "Anime")],
        "folder[0].name: 'Anime' must be 1-40 characters: lowercase letters, digits, '-' "
        "and '_', starting with a letter or digit; did you mean 'anime'?",
    ),
    (
        "duplicate_name",
        two_folders(),
        [((*F1, "name"), "anime")],
        "folder[1].name: 'anime' is already used by folder[0]",
    ),
    (
        "inbox_not_string",
        minimal(),
        [((*F0, "inbox"), 7)],
        "folder[0].inbox: must be a string, not an integer",
    ),
    (
        "relative_without_base",
        minimal(),
        [((*F0, "outbox"), "out")],
        "folder[0].outbox: 'out' must be an absolute path",
    ),
    (
        "tilde",
        minimal(),
        [((*F0, "outbox"), "~/out")],
        "folder[0].outbox: '~/out': '~' is not expanded here; write the full path",
    ),
    ("empty_path", minimal(), [((*F0, "outbox"), " ")], "folder[0].outbox: must not be empty"),
    # styles
    (
        "art_style_typo",
        minimal(),
        [((*F0, "style", "art_style"), "Studio Gibli")],
        "folder[0].style.art_style: 'Studio Gibli' is not an art style; "
        "did you mean 'Studio Ghibli'?",
    ),
    (
        "art_style_case",
        minimal(),
        [((*F0, "style", "art_style"), "van gogh")],
        "folder[0].style.art_style: 'van gogh' is not an art style; did you mean 'Van Gogh'?",
    ),
    (
        "art_style_unknown",
        minimal(),
        [((*F0, "style", "art_style"), "Qwxyz")],
        "folder[0].style.art_style: 'Qwxyz' is not an art style "
        "(see the list in config.example.toml)",
    ),
    (
        "model_typo",
        two_folders(),
        [(("styles", "ghibli", "model"), "Dream shaper")],
        "styles.ghibli.model: 'Dream shaper' is not a model; did you mean 'Dreamshaper'?",
    ),
    (
        "prompt_type_typo",
        minimal(),
        [((*F0, "style", "prompt_type"), "costum"), ((*F0, "style", "prompt"), "x")],
        "folder[0].style.prompt_type: 'costum' is not a prompt type; did you mean 'custom'?",
    ),
    (
        "version_typo",
        minimal(),
        [((*F0, "style", "version"), "V2")],
        "folder[0].style.version: 'V2' is not a version; did you mean 'v2'?",
    ),
    (
        "custom_without_prompt",
        minimal(),
        [((*F0, "style", "prompt_type"), "custom")],
        "folder[0].style.prompt: required when prompt_type is 'custom'",
    ),
    (
        "append_default_blank_prompt",
        two_folders(),
        [
            (("styles", "ghibli", "prompt_type"), "append_default"),
            (("styles", "ghibli", "prompt"), " "),
        ],
        "styles.ghibli.prompt: must not be empty when prompt_type is 'append_default'",
    ),
    (
        "missing_art_style",
        two_folders(),
        [(("styles", "ghibli"), {"model": "default"})],
        'styles.ghibli.art_style: required (for example "Studio Ghibli")',
    ),
    (
        "preset_typo",
        two_folders(),
        [((*F1, "style"), "gibli")],
        "folder[1].style: no preset named 'gibli' in [styles]; did you mean 'ghibli'?",
    ),
    (
        "preset_without_presets",
        minimal(),
        [((*F0, "style"), "ghibli")],
        "folder[0].style: no preset named 'ghibli' in [styles]; define [styles.NAME] or use an "
        "inline [folder.style] table",
    ),
    (
        "style_missing",
        {"folder": [{"name": "a", "inbox": "/i", "outbox": "/o"}]},
        [],
        "folder[0].style: required: a preset name from [styles] or an inline [folder.style]",
    ),
    (
        "style_wrong_type",
        minimal(),
        [((*F0, "style"), 3)],
        "folder[0].style: must be a preset name or an inline table, not an integer",
    ),
    (
        "preset_case_clash",
        two_folders(),
        [(("styles", "Ghibli"), {"art_style": "Clay"})],
        "styles.Ghibli: same name as styles.ghibli (preset names are compared case-insensitively)",
    ),
    (
        "preset_not_table",
        two_folders(),
        [(("styles", "x"), "Clay")],
        "styles.x: must be a table like [styles.x], not a string",
    ),
    (
        "quoted_preset_path",
        two_folders(),
        [(("styles", "my style"), {"art_style": "Clay", "modle": "x"})],
        "styles.\"my style\".modle: unknown key; did you mean 'model'?",
    ),
    # trims
    (
        "fps_unknown",
        minimal(),
        [((*F0, "fps_resolution"), "QUARTER")],
        "folder[0].fps_resolution: 'QUARTER' is not an fps_resolution (one of: FULL, HALF)",
    ),
    (
        "fps_case",
        minimal(),
        [((*F0, "style", "fps_resolution"), "half")],
        "folder[0].style.fps_resolution: 'half' is not an fps_resolution; did you mean 'HALF'?",
    ),
    (
        "max_negative",
        minimal(),
        [((*F0, "max_seconds"), -1)],
        "folder[0].max_seconds: must not be negative, not -1",
    ),
    (
        "start_negative",
        two_folders(),
        [(("styles", "ghibli", "start_seconds"), -0.5)],
        "styles.ghibli.start_seconds: must not be negative, not -0.5",
    ),
    (
        "seconds_bool",
        minimal(),
        [((*F0, "settle_seconds"), True)],
        "folder[0].settle_seconds: must be a number, not a boolean",
    ),
    (
        "seconds_nan",
        minimal(),
        [(("daemon", "rescan_seconds"), float("nan"))],
        "daemon.rescan_seconds: must be a finite number",
    ),
    # folder options
    (
        "on_success_typo",
        minimal(),
        [((*F0, "on_success"), "archve")],
        "folder[0].on_success: 'archve' is not an on_success action; did you mean 'archive'?",
    ),
    (
        "folder_observer",
        minimal(),
        [((*F0, "observer"), "inotify")],
        "folder[0].observer: 'inotify' is not an observer (one of: auto, native, polling)",
    ),
    (
        "recursive_string",
        minimal(),
        [((*F0, "recursive"), "yes")],
        "folder[0].recursive: must be true or false, not a string",
    ),
    (
        "include_string",
        minimal(),
        [((*F0, "include"), "*.mp4")],
        "folder[0].include: must be an array of strings, not a string",
    ),
    (
        "exclude_item",
        minimal(),
        [((*F0, "exclude"), ["*.tmp", 3])],
        "folder[0].exclude[1]: must be a non-empty string, not an integer",
    ),
    (
        "min_size_negative",
        minimal(),
        [((*F0, "min_size_bytes"), -1)],
        "folder[0].min_size_bytes: must be at least 0, not -1",
    ),
    (
        "ready_marker_path",
        minimal(),
        [((*F0, "ready_marker"), "x/.done")],
        "folder[0].ready_marker: 'x/.done' must be a suffix like '.done', not a path",
    ),
    (
        "mount_marker_escape",
        minimal(),
        [((*F0, "mount_marker"), "../online")],
        "folder[0].mount_marker: '../online' must be a file name relative to the inbox",
    ),
    # daemon
    (
        "uploads_zero",
        minimal(),
        [(("daemon", "max_parallel_uploads"), 0)],
        "daemon.max_parallel_uploads: must be at least 1, not 0",
    ),
    (
        "renders_zero",
        minimal(),
        [(("daemon", "max_active_renders"), 0)],
        "daemon.max_active_renders: must be at least 1, not 0",
    ),
    (
        "credit_limit_negative",
        minimal(),
        [(("daemon", "daily_credit_limit"), -5)],
        "daemon.daily_credit_limit: must be at least 0, not -5",
    ),
    (
        "uploads_string",
        minimal(),
        [(("daemon", "max_parallel_uploads"), "2")],
        "daemon.max_parallel_uploads: must be an integer, not a string",
    ),
    (
        "uploads_float",
        minimal(),
        [(("daemon", "max_parallel_uploads"), 2.0)],
        "daemon.max_parallel_uploads: must be an integer, not a float",
    ),
    (
        "observer_typo",
        minimal(),
        [(("daemon", "observer"), "poling")],
        "daemon.observer: 'poling' is not an observer; did you mean 'polling'?",
    ),
    (
        "log_format_typo",
        minimal(),
        [(("daemon", "log_format"), "jsonl")],
        "daemon.log_format: 'jsonl' is not a log format; did you mean 'json'?",
    ),
    (
        "http_token_required_off_loopback",
        minimal(),
        [(("daemon", "http_listen"), "0.0.0.0:9309")],
        "daemon.http_token: required because http_listen '0.0.0.0:9309' is reachable from other "
        "machines: set daemon.http_token (make one with `openssl rand -hex 24`), or bind "
        'http_listen to "127.0.0.1:9309" (or "" to turn it off)',
    ),
    (
        "http_token_required_for_a_host_name",
        minimal(),
        [(("daemon", "http_listen"), "nas.local:9309")],
        "daemon.http_token: required because http_listen 'nas.local:9309' is reachable from "
        "other machines: set daemon.http_token (make one with `openssl rand -hex 24`), or bind "
        'http_listen to "127.0.0.1:9309" (or "" to turn it off)',
    ),
    daemon_rule(
        "history_days_negative",
        "history_days",
        -1,
        "daemon.history_days: must be 0 (keep history forever) or more days, not -1",
    ),
    daemon_rule(
        "history_days_not_whole",
        "history_days",
        1.5,
        "daemon.history_days: must be a whole number of days (0 keeps history forever), not "
        "a float",
    ),
    daemon_rule(
        "http_token_too_short",
        "http_token",
        "short-secret",
        "daemon.http_token: must be at least 16 characters without surrounding spaces; make one "
        "with `openssl rand -hex 24`",
    ),
    *[
        daemon_rule(
            f"http_listen_{label}",
            "http_listen",
            value,
            f'daemon.http_listen: {value!r} must be "host:port" like "127.0.0.1:9309" (port '
            '1-65535, IPv6 hosts in [brackets]), or "" to turn the HTTP endpoint off',
        )
        for label, value in [
            ("no_host", ":9309"),
            ("no_port", "localhost"),
            ("port_zero", "127.0.0.1:0"),
            ("port_high", "127.0.0.1:65536"),
            ("ipv6_bare", "::1:9309"),
            ("port_text", "localhost:http"),
        ]
    ],
    *[
        daemon_rule(
            f"umask_{label}",
            "umask",
            value,
            'daemon.umask: must be an octal string like "0002" or "0022" (at most 0777)',
        )
        for label, value in [
            ("digit_8", "0008"),
            ("too_big_str", "1000"),
            ("too_big_int", 0o1000),
            ("negative", -1),
            ("bool", True),
            ("word", "group"),
        ]
    ],
    # api
    (
        "base_url_scheme",
        minimal(),
        [(("api", "base_url"), "ftp://api.magichour.ai")],
        "api.base_url: 'ftp://api.magichour.ai' is not an http(s) URL like 'https://host/path'",
    ),
    (
        "base_url_bare_host",
        minimal(),
        [(("api", "base_url"), "api.magichour.ai")],
        "api.base_url: 'api.magichour.ai' is not an http(s) URL like 'https://host/path'",
    ),
    (
        "base_url_bad_port",
        minimal(),
        [(("api", "base_url"), "http://h:99999")],
        "api.base_url: 'http://h:99999' is not an http(s) URL like 'https://host/path'",
    ),
    (
        "poll_zero",
        minimal(),
        [(("api", "poll_interval_seconds"), 0)],
        "api.poll_interval_seconds: must be greater than 0, not 0",
    ),
    (
        "render_timeout_string",
        minimal(),
        [(("api", "render_timeout_minutes"), "3h")],
        "api.render_timeout_minutes: must be a number, not a string",
    ),
    (
        "api_not_table",
        minimal(),
        [(("api",), "https://x")],
        "api: must be a table, not a string",
    ),
    # notify
    (
        "notify_event_typo",
        minimal(),
        [(("notify", "on"), ["failed", "hold"])],
        "notify.on[1]: 'hold' is not an event; did you mean 'held'?",
    ),
    (
        "webhook_not_url",
        minimal(),
        [(("notify", "webhook_url"), "hooks.example")],
        "notify.webhook_url: 'hooks.example' is not an http(s) URL like 'https://host/path'",
    ),
]


@pytest.mark.parametrize(
    ("base", "changes", "expected"),
    [pytest.param(base, changes, expected, id=name) for name, base, changes, expected in RULES],
)
def test_each_rule_reports_exactly_one_path_prefixed_problem(
    base: dict[str, Any], changes: list[Change], expected: str
) -> None:
    assert problems_of(patched(base, *changes)) == [expected]


def test_every_problem_is_reported_at_once() -> None:
    raw = patched(
        two_folders(),
        (("api", "token"), SECRET),
        (("daemon", "max_active_renders"), 0),
        ((*F0, "style", "art_style"), "Studio Gibli"),
        ((*F0, "recursve"), True),
        ((*F1, "inbox"), "/m/anime/in"),
        ((*F1, "fps_resolution"), "FUL"),
        (("notify", "on"), ["outages"]),
    )
    assert problems_of(raw) == [
        "api.token: put the key in token_file or the environment, never in the config",
        "daemon.max_active_renders: must be at least 1, not 0",
        "folder[0].recursve: unknown key; did you mean 'recursive'?",
        "folder[0].style.art_style: 'Studio Gibli' is not an art style; "
        "did you mean 'Studio Ghibli'?",
        "folder[1].fps_resolution: 'FUL' is not an fps_resolution; did you mean 'FULL'?",
        "notify.on[0]: 'outages' is not an event; did you mean 'outage'?",
        "folder[1].inbox: same inbox as folder[0] ('anime'): /m/anime/in",
    ]


def test_missing_required_folder_keys_are_each_named() -> None:
    assert problems_of({"folder": [{}]}) == [
        "folder[0].name: required (lowercase letters, digits, '-' and '_')",
        "folder[0].inbox: required (an absolute path)",
        "folder[0].outbox: required (an absolute path)",
        "folder[0].style: required: a preset name from [styles] or an inline [folder.style]",
    ]


@pytest.mark.parametrize(
    "changes",
    [
        [(("api", "token"), SECRET)],
        [(("api", "token_env"), SECRET)],
        [(("api", "api_key"), SECRET), ((*F0, "TOKEN"), SECRET)],
        [(("api", "token_env"), SECRET + " x")],
    ],
)
def test_a_key_in_the_config_is_never_echoed(
    changes: list[tuple[tuple[str | int, ...], Any]],
) -> None:
    with pytest.raises(ConfigError) as excinfo:
        parse(patched(minimal(), *changes))
    text = "\n".join([str(excinfo.value), *excinfo.value.problems, *excinfo.value.warnings])
    assert "put the key in token_file or the environment" in text
    assert SECRET not in text


def test_prompt_with_default_type_warns() -> None:
    config = parse(patched(minimal(), ((*F0, "style", "prompt"), "more clouds")))
    assert config.warnings == (
        "folder[0].style.prompt: set but prompt_type is 'default', so the service may ignore "
        "it; use prompt_type = 'custom' or 'append_default'",
    )


def test_non_mapping_top_level_is_a_problem() -> None:
    with pytest.raises(ConfigError) as excinfo:
        parse(["not", "a", "table"])  # type: ignore[arg-type]
    assert excinfo.value.problems == ["(top level): must be a table"]


def test_result_is_a_config() -> None:
    assert isinstance(parse(two_folders()), Config)


# --- slugs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("art_style", "slug"),
    [
        ("Studio Ghibli", "studio-ghibli"),
        ("Assassin's Creed", "assassins-creed"),
        ("Assassin\u2019s Creed", "assassins-creed"),
        ("Sub-Zero", "sub-zero"),
        ("Retro Sci-Fi", "retro-sci-fi"),
        ("3D Render", "3d-render"),
        ("GTA", "gta"),
        ("  Flat -- 2D  Anime!! ", "flat-2d-anime"),
        ("Café Noir", "caf-noir"),
    ],
)
def test_style_slug(art_style: str, slug: str) -> None:
    assert style_slug(art_style) == slug
