"""adapters.config_file: loading TOML, the example config, token sources, environment checks."""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

import pytest

from mh_watchd.adapters.config_file import (
    CREDENTIAL_NAME,
    DEFAULT_CONFIG_PATH,
    check_environment,
    check_extras,
    config_path,
    load,
    read_token,
    token_source,
)
from mh_watchd.core.config import (
    API_KEYS,
    DAEMON_KEYS,
    FOLDER_KEYS,
    NOTIFY_KEYS,
    PRESET_KEYS,
    ApiConfig,
    Config,
)
from mh_watchd.core.errors import ConfigError
from mh_watchd.core.intake import Verdict, classify

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.toml"
SECRET = "mhk_live_S3cr3tT0kenValue"
IS_ROOT = os.geteuid() == 0


def write_config(directory: Path, folders: str, extra: str = "") -> Path:
    path = directory / "config.toml"
    path.write_text(f'[daemon]\nstate_dir = "{directory / "state"}"\n{extra}\n{folders}')
    return path


def folder_toml(tmp: Path, name: str = "anime", **paths: Path) -> str:
    lines = ["[[folder]]", f'name = "{name}"', 'style = { art_style = "Clay" }']
    defaults = {"inbox": tmp / name / "in", "outbox": tmp / name / "out"}
    for key, value in {**defaults, **paths}.items():
        lines.append(f'{key} = "{value}"')
    return "\n".join(lines) + "\n"


def load_error(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as excinfo:
        load(path)
    return excinfo.value


# --- finding and loading ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("cli", "environ", "expected"),
    [
        ("/a.toml", {"MH_WATCHD_CONFIG": "/b.toml"}, Path("/a.toml")),
        (None, {"MH_WATCHD_CONFIG": "/b.toml"}, Path("/b.toml")),
        (None, {"MH_WATCHD_CONFIG": ""}, DEFAULT_CONFIG_PATH),
        (None, {}, Path("/etc/mh-watchd/config.toml")),
    ],
)
def test_config_path_order(cli: str | None, environ: dict[str, str], expected: Path) -> None:
    assert config_path(cli, environ) == expected


def test_load_parses_and_resolves_relative_paths_against_the_file(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "config.toml"
    path.parent.mkdir()
    path.write_text(
        '[api]\ntoken_file = "token"\n'
        '[[folder]]\nname = "a"\ninbox = "../media/in"\noutbox = "/srv/out"\n'
        'style = { art_style = "Studio Ghibli" }\n'
    )
    config = load(path)
    assert isinstance(config, Config)
    assert config.folders[0].inbox == PurePosixPath(tmp_path / "media" / "in")
    assert config.folders[0].style.version == "v2"
    assert config.api.token_file == PurePosixPath(path.parent / "token")


def test_load_reports_parse_problems(tmp_path: Path) -> None:
    path = write_config(tmp_path, folder_toml(tmp_path) + "recursve = true\n")
    assert load_error(path).problems == [
        "folder[0].recursve: unknown key; did you mean 'recursive'?"
    ]


def test_toml_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[daemon]\numask = "0002"\nsettle_seconds = = 3\n')
    (problem,) = load_error(path).problems
    assert problem.startswith(f"{path}: TOML syntax error: ")
    assert "line 3" in problem
    assert "column" in problem


def test_missing_file_says_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    assert load_error(path).problems == [
        f"{path}: no config at {path}; copy config.example.toml there or pass -c"
    ]


def test_directory_and_non_utf8_files_are_config_errors(tmp_path: Path) -> None:
    assert load_error(tmp_path).problems == [
        f"{tmp_path}: is a directory; pass the config file itself"
    ]
    path = tmp_path / "latin1.toml"
    path.write_bytes(b"# caf\xe9\n[daemon]\n")
    assert load_error(path).problems == [
        f"{path}: not UTF-8 text (bad byte at offset 5); save it as UTF-8"
    ]


@pytest.mark.parametrize(
    "text",
    [
        f'[api]\ntoken = "{SECRET}"\n',
        f'[api]\ntoken_env = "{SECRET}"\n',
        f'[api]\ntoken = "{SECRET}\n',  # unterminated string: a syntax error on the key's line
        f"[api]\ntoken = {SECRET}\n",  # bare value: a syntax error
        f'api_key = "{SECRET}"\n[api\n',
    ],
)
def test_a_key_in_the_file_never_appears_in_the_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text + folder_toml(tmp_path))
    error = load_error(path)
    assert error.problems
    assert SECRET not in "\n".join([str(error), repr(error), *error.problems, *error.warnings])


# --- the example config -----------------------------------------------------------------


def example_in(tmp_path: Path) -> Path:
    """config.example.toml with its absolute paths moved under tmp_path."""
    text = EXAMPLE.read_text()
    for prefix in ("/srv/media/mh", "/mnt/nas", "/var/lib/mh-watchd"):
        text = text.replace(f'"{prefix}', f'"{tmp_path}{prefix}')
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_example_config_parses_cleanly_with_two_styles(tmp_path: Path) -> None:
    config = load(example_in(tmp_path))
    assert config.warnings == ()
    anime, painting = config.folders
    assert (anime.style_name, anime.style.art_style, anime.recursive) == (
        "ghibli",
        "Studio Ghibli",
        True,
    )
    assert (painting.style_name, painting.style.art_style) == (None, "Watercolor")
    assert anime.inbox == PurePosixPath(f"{tmp_path}/srv/media/mh/anime/in")
    assert painting.archive == PurePosixPath(f"{tmp_path}/mnt/nas/video/to-paint/.mh-done")
    assert config.daemon.state_dir == PurePosixPath(f"{tmp_path}/var/lib/mh-watchd")
    assert set(config.styles) == {"ghibli", "painting"}


def test_example_config_documents_every_key() -> None:
    text = EXAMPLE.read_text()
    for key in (*API_KEYS, *DAEMON_KEYS, *FOLDER_KEYS, *NOTIFY_KEYS):
        assert re.search(rf"^(# )?{key} = ", text, re.MULTILINE), f"{key} is not in the example"
    for key in PRESET_KEYS:
        assert re.search(rf"^(#\s+)?{key}\b", text, re.MULTILINE), f"preset key {key} missing"


def test_example_config_passes_the_environment_check_once_folders_exist(tmp_path: Path) -> None:
    config = load(example_in(tmp_path))
    problems = check_environment(config)
    assert [line.split(" ", 1)[0] for line in problems] == ["folder[0].inbox", "folder[1].inbox"]
    for folder in config.folders:
        Path(folder.inbox).mkdir(parents=True)
    Path(config.folders[1].inbox, ".mh-share-online").touch()
    assert check_environment(config) == []


@pytest.mark.parametrize(
    ("rel_path", "excluded"),
    [
        ("drafts/a.mp4", True),  # a top-level drafts folder
        ("x/drafts/a.mp4", True),
        ("x/y/Drafts/a.mp4", True),  # any depth, any case
        ("a.mp4", False),
        ("trip/a.mp4", False),
        ("drafts-2024/a.mp4", False),
        ("trip/clip.sample.mp4", True),
    ],
)
def test_example_config_excludes_drafts_at_any_depth(
    tmp_path: Path, rel_path: str, excluded: bool
) -> None:
    anime = load(example_in(tmp_path)).folders[0]
    verdict = classify(
        PurePosixPath(rel_path),
        size=1000,
        include=anime.include,
        exclude=anime.exclude,
        min_size_bytes=anime.min_size_bytes,
        ready_marker=anime.ready_marker,
    )
    assert verdict is (Verdict.EXCLUDED if excluded else Verdict.CANDIDATE)


def test_apprise_urls_without_the_apprise_package_are_an_environment_problem(
    tmp_path: Path,
) -> None:
    with_urls = load(
        write_config(
            tmp_path,
            folder_toml(tmp_path),
            '[notify]\napprise_urls = ["tgram://123:SECRET@bot/chat"]',
        )
    )
    problems = check_extras(with_urls, importable=lambda name: name != "apprise")
    assert len(problems) == 1
    assert problems[0].startswith("notify.apprise_urls:")
    assert "pip install 'mh-watchd[apprise]'" in problems[0] and "apprise_urls = []" in problems[0]
    assert "SECRET" not in problems[0]
    assert check_extras(with_urls, importable=lambda name: True) == []
    without = load(write_config(tmp_path, folder_toml(tmp_path)))
    assert check_extras(without, importable=lambda name: False) == []


# --- the token --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("use_file", "use_credential", "use_env", "expected", "source"),
    [
        (True, True, True, "from-file", "token_file"),
        (False, True, True, "from-credential", "systemd credential magic-hour-token"),
        (False, False, True, "from-env", "$MH_TEST_KEY"),
        (False, False, False, None, "$MH_TEST_KEY (not set)"),
    ],
)
def test_token_order_file_then_credential_then_environment(
    tmp_path: Path,
    use_file: bool,
    use_credential: bool,
    use_env: bool,
    expected: str | None,
    source: str,
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("  from-file\n")
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / CREDENTIAL_NAME).write_text("\tfrom-credential\n\n")
    api = ApiConfig(
        token_env="MH_TEST_KEY", token_file=PurePosixPath(token_file) if use_file else None
    )
    environ = {"CREDENTIALS_DIRECTORY": str(credentials)} if use_credential else {}
    if use_env:
        environ["MH_TEST_KEY"] = " from-env \n"
    assert read_token(api, environ) == expected
    assert token_source(api, environ).startswith(source)


def test_credentials_directory_without_our_credential_falls_through(tmp_path: Path) -> None:
    environ = {"CREDENTIALS_DIRECTORY": str(tmp_path), "MAGIC_HOUR_API_KEY": SECRET}
    assert read_token(ApiConfig(), environ) == SECRET
    assert token_source(ApiConfig(), environ) == "$MAGIC_HOUR_API_KEY"


@pytest.mark.parametrize("content", ["", "  \n\t"])
def test_empty_sources_give_none(tmp_path: Path, content: str) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(content)
    assert read_token(ApiConfig(token_file=PurePosixPath(token_file)), {}) is None
    assert read_token(ApiConfig(), {"MAGIC_HOUR_API_KEY": content}) is None


def test_unreadable_token_file_names_the_path_never_the_key(tmp_path: Path) -> None:
    missing = tmp_path / "missing-token"
    with pytest.raises(ConfigError) as excinfo:
        read_token(ApiConfig(token_file=PurePosixPath(missing)), {"MAGIC_HOUR_API_KEY": SECRET})
    assert excinfo.value.problems == [
        f"api.token_file: cannot read {missing}: No such file or directory; "
        "fix the path or its permissions"
    ]
    with pytest.raises(ConfigError) as excinfo:
        read_token(ApiConfig(token_file=PurePosixPath(tmp_path)), {})
    assert str(tmp_path) in excinfo.value.problems[0]


def test_oversized_token_file_is_refused_without_quoting_it(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(SECRET * 500)
    with pytest.raises(ConfigError) as excinfo:
        read_token(ApiConfig(token_file=PurePosixPath(token_file)), {})
    assert excinfo.value.problems == [
        f"api.token_file: {token_file} is over 4096 bytes; it must hold only the key"
    ]
    assert SECRET not in str(excinfo.value)


# --- the environment check --------------------------------------------------------------


def test_missing_inbox_and_uncreatable_outbox_are_reported(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    path = write_config(tmp_path, folder_toml(tmp_path, outbox=blocker / "out"))
    config = load(path)
    inbox = tmp_path / "anime" / "in"
    assert check_environment(config) == [
        f"folder[0].inbox {inbox}: does not exist; create it (mkdir -p {inbox}) or mount the share",
        f"folder[0].outbox {blocker / 'out'}: cannot be created: {blocker} is not a directory; "
        "fix the path",
    ]


def test_inbox_and_outbox_that_are_files(tmp_path: Path) -> None:
    inbox, outbox = tmp_path / "in", tmp_path / "out"
    inbox.write_text("x")
    outbox.write_text("x")
    config = load(write_config(tmp_path, folder_toml(tmp_path, inbox=inbox, outbox=outbox)))
    assert check_environment(config) == [
        f"folder[0].inbox {inbox}: is not a directory; point inbox at a folder",
        f"folder[0].outbox {outbox}: exists but is not a directory; fix the path",
    ]


def test_creatable_folders_pass_and_no_probe_file_is_left(tmp_path: Path) -> None:
    inbox = tmp_path / "anime" / "in"
    inbox.mkdir(parents=True)
    config = load(
        write_config(
            tmp_path,
            folder_toml(tmp_path, name="anime", archive=tmp_path / "done")
            + folder_toml(
                tmp_path, name="b", inbox=tmp_path / "b-in", outbox=tmp_path / "anime" / "out"
            ),
        )
    )
    (tmp_path / "b-in").mkdir()
    (tmp_path / "anime" / "out").mkdir()
    assert check_environment(config) == []
    assert sorted(p.name for p in inbox.iterdir()) == []
    assert sorted(p.name for p in (tmp_path / "anime" / "out").iterdir()) == []
    # nothing was created either: not-yet-existing folders are only checked for creatability
    assert not (tmp_path / "done").exists()
    assert not (tmp_path / "state").exists()


def test_state_dir_that_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "anime" / "in").mkdir(parents=True)
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    path = tmp_path / "config.toml"
    path.write_text(f'[daemon]\nstate_dir = "{blocker}/state"\n' + folder_toml(tmp_path))
    assert check_environment(load(path)) == [
        f"daemon.state_dir {blocker}/state: cannot be created: {blocker} is not a directory; "
        "fix the path"
    ]


def test_mount_requirements_and_token_file_are_checked(tmp_path: Path) -> None:
    inbox = tmp_path / "anime" / "in"
    inbox.mkdir(parents=True)
    extra = f'[api]\ntoken_file = "{tmp_path}/no-token"\n'
    folders = folder_toml(tmp_path) + 'require_mount = true\nmount_marker = ".online"\n'
    config = load(write_config(tmp_path, folders, extra))
    assert check_environment(config) == [
        f"folder[0].inbox {inbox}: is not a mount point (require_mount = true); mount the share",
        f"folder[0].inbox {inbox}: the mount_marker '.online' is missing; mount the share or "
        "create the marker file",
        f"api.token_file {tmp_path}/no-token: cannot read it (No such file or directory); "
        "fix the path or its permissions",
    ]


def test_existing_outbox_without_write_permission(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "anime" / "in").mkdir(parents=True)
    outbox = tmp_path / "anime" / "out"
    outbox.mkdir()
    if IS_ROOT:
        # Root writes through mode bits, so deny at the OS edge instead of with chmod.
        real_access = os.access

        def access(path: object, mode: int) -> bool:
            return not (Path(str(path)) == outbox and mode & os.W_OK) and real_access(path, mode)  # type: ignore[arg-type]

        monkeypatch.setattr(os, "access", access)
    else:
        outbox.chmod(0o500)
    try:
        problems = check_environment(load(write_config(tmp_path, folder_toml(tmp_path))))
    finally:
        outbox.chmod(0o700)
    assert problems == [
        f"folder[0].outbox {outbox}: is not writable (permission denied); fix its permissions"
    ]
