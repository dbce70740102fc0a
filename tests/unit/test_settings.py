"""Settings: sources, precedence, mount tables and one-line errors (app.settings)."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.settings import SAMPLE_MOUNTS_DIR, SettingsError
from app.settings_load import load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("VEND_"):
            monkeypatch.delenv(key)


def test_defaults_serve_the_sample_mounts() -> None:
    """With no settings at all, the two sample mounts shipped in the repo are served."""
    settings = load_settings()
    assert [m.path for m in settings.mounts] == [
        SAMPLE_MOUNTS_DIR / "server1",
        SAMPLE_MOUNTS_DIR / "server2",
    ]
    assert (settings.host, settings.port, settings.workers) == ("127.0.0.1", 8000, 1)
    assert settings.index_names == [] and settings.name_pattern == "default"


def test_env_mounts_as_json_with_tables(monkeypatch: pytest.MonkeyPatch) -> None:
    """VEND_MOUNTS takes paths and tables; names default from the paths without repeating."""
    monkeypatch.setenv(
        "VEND_MOUNTS", '["/server1/content", {"path": "/server2/content", "sendfile": false}]'
    )
    settings = load_settings()
    assert [(m.name, str(m.path), m.sendfile) for m in settings.mounts] == [
        ("server1", "/server1/content", True),
        ("server2", "/server2/content", False),
    ]


def test_toml_file_env_and_command_line_precedence(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Command line beats environment, which beats the TOML file, which beats defaults."""
    config = tmp_path / "vend.toml"
    config.write_text(
        'mounts = ["/a", {path = "/b", name = "bee"}]\nport = 9000\n[timeouts]\nsend_s = 5\n'
    )
    settings = load_settings(config)
    assert [m.name for m in settings.mounts] == ["a", "bee"]
    assert settings.port == 9000 and settings.timeouts.send_s == 5
    monkeypatch.setenv("VEND_PORT", "9100")
    monkeypatch.setenv("VEND_TIMEOUTS__SEND_S", "7")
    assert load_settings(config).port == 9100
    assert load_settings(config).timeouts.send_s == 7
    assert load_settings(config, port=9200).port == 9200
    monkeypatch.setenv("VEND_CONFIG", str(config))
    assert [m.name for m in load_settings().mounts] == ["a", "bee"]


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/server1/content", "server1"),
        ("/srv/nfs/images", "images"),
        ("/content", "content"),
        ("/a/b/content", "b"),
    ],
)
def test_default_mount_name_depends_on_its_own_path_only(path: str, name: str) -> None:
    """A mount's default name comes from its own path: the directory's, or the parent's
    for a directory called content."""
    alone = load_settings(mounts=[path]).mounts[0].name
    among = load_settings(mounts=["/x/y", path, "/server9/content"]).mounts[1].name
    assert alone == among == name


def test_adding_a_mount_renames_no_other() -> None:
    """Adding /server4/content to three mounts keeps the three names (no mountN renumbering)."""
    three = [f"/server{i}/content" for i in (1, 2, 3)]
    before = [m.name for m in load_settings(mounts=three).mounts]
    after = [m.name for m in load_settings(mounts=[*three, "/server4/content"]).mounts]
    assert before == ["server1", "server2", "server3"]
    assert after == [*before, "server4"]


def test_duplicate_default_names_are_refused_naming_both() -> None:
    """Two mounts with the same default name are refused in one line naming both paths."""
    with pytest.raises(SettingsError) as caught:
        load_settings(mounts=["/a/content", "/b/a"])
    message = str(caught.value)
    assert "\n" not in message
    assert "/a/content" in message and "/b/a" in message and "'a'" in message
    assert "set name" in message


BAD = [
    ("port", {"port": 0}, "port"),
    ("pattern", {"name_pattern": "("}, "name_pattern"),
    ("access-log", {"access_log": "relative.log"}, "access_log"),
    ("index-name", {"index_names": ["../x"]}, "index_names"),
    ("mime", {"mime_types": {"webp": "image/webp"}}, "mime_types"),
    ("mount-extra-key", {"mounts": [{"path": "/a", "colour": "red"}]}, "mounts.0.colour"),
    (
        "duplicate-names",
        {"mounts": [{"path": "/a", "name": "x"}, {"path": "/b", "name": "x"}]},
        "unique",
    ),
    ("bad-timeout", {"timeouts": {"fs_op_s": -1}}, "timeouts.fs_op_s"),
    ("proxy-not-an-address", {"trusted_proxies": ["notanip"]}, "trusted_proxies"),
    ("empty-mounts", {"mounts": []}, "mounts is empty"),
    ("socket-relative", {"unix_socket": "vend.sock"}, "unix_socket"),
    ("socket-too-long", {"unix_socket": "/" + "s" * 107}, "unix_socket"),
]


@pytest.mark.parametrize(("overrides", "field"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_invalid_settings_give_one_line_naming_the_field(
    overrides: dict[str, object], field: str
) -> None:
    """Each invalid value raises SettingsError with one line that names the field."""
    with pytest.raises(SettingsError) as caught:
        load_settings(**overrides)
    message = str(caught.value)
    assert "\n" not in message and field in message


def test_unknown_key_in_file_and_bad_toml(tmp_path: Path) -> None:
    """A misspelt key and a broken file are refused with the key or file named."""
    typo = tmp_path / "typo.toml"
    typo.write_text('mountz = ["/a"]\n')
    broken = tmp_path / "broken.toml"
    broken.write_text("mounts = [\n")
    for path, word in (
        (typo, "mountz"),
        (broken, "not valid TOML"),
        (tmp_path / "none.toml", "none.toml"),
    ):
        with pytest.raises(SettingsError, match=word):
            load_settings(path)


def test_env_value_that_is_not_json(monkeypatch: pytest.MonkeyPatch) -> None:
    """A VEND_MOUNTS that is not JSON is one line naming the variable and its shape."""
    monkeypatch.setenv("VEND_MOUNTS", "/a,/b")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert str(caught.value) == (
        """invalid VEND_MOUNTS: it must be a JSON list, e.g. VEND_MOUNTS='["/srv/content"]'"""
    )


def test_errors_name_the_source_of_the_value(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The same bad port names the option, the variable or the file, by precedence."""
    config = tmp_path / "vend.toml"
    config.write_text('port = "x"\n')
    integer = "Input should be a valid integer, unable to parse string as an integer"
    with pytest.raises(SettingsError) as caught:
        load_settings(config)
    assert str(caught.value) == f"invalid setting port in {config}: {integer}"
    monkeypatch.setenv("VEND_PORT", "abc")
    with pytest.raises(SettingsError) as caught:
        load_settings(config)
    assert str(caught.value) == f"invalid VEND_PORT: {integer}"
    with pytest.raises(SettingsError) as caught:
        load_settings(config, port=0)
    assert str(caught.value) == "invalid option --port: Input should be greater than or equal to 1"


def test_relative_mounts_in_a_file_are_taken_from_its_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Relative mount paths in a TOML file are joined to the file's directory."""
    (tmp_path / "conf").mkdir()
    config = tmp_path / "conf" / "vend.toml"
    config.write_text('mounts = ["a", {path = "../b"}, "/abs/c"]\n')
    monkeypatch.chdir("/")
    paths = [str(m.path) for m in load_settings(config).mounts]
    assert paths == [f"{tmp_path}/conf/a", f"{tmp_path}/b", "/abs/c"]


def test_the_same_directory_listed_twice_is_refused() -> None:
    """/srv/a and /srv/../srv/a are one directory: refused as listed twice, not as a name clash."""
    with pytest.raises(SettingsError) as caught:
        load_settings(mounts=["/srv/a", "/srv/b", "/srv/../srv/a"])
    assert str(caught.value) == (
        "invalid settings: mount /srv/a is listed twice"
        " (mounts 1 and 3 are the same directory): remove one"
    )


def test_example_file_lists_every_setting_with_its_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """examples/vend.toml names every setting, each at its default (mounts aside)."""
    monkeypatch.chdir("/")
    example = load_settings(SAMPLE_MOUNTS_DIR.parent / "vend.toml")
    defaults = load_settings()
    assert example.model_dump(exclude={"mounts"}) == defaults.model_dump(exclude={"mounts"})
    assert [m.path for m in example.mounts] == [m.path for m in defaults.mounts]
    import tomllib

    listed = tomllib.loads((SAMPLE_MOUNTS_DIR.parent / "vend.toml").read_text())
    assert set(listed) == set(type(defaults).model_fields)
    assert set(listed["timeouts"]) == set(type(defaults.timeouts).model_fields)
    assert set(listed["cache"]) == set(type(defaults.cache).model_fields)
