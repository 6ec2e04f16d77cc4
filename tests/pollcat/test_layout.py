"""Layout templates, user mapping, and the path checks that keep writes under the root."""

from __future__ import annotations

import pytest

from pollcat.errors import ConfigurationError, InvalidUserName, UnsafePathError
from pollcat.layout import (
    DEFAULT_LAYOUT,
    check_not_reserved,
    check_relpath,
    map_user,
    render_path,
)

pytestmark = pytest.mark.unit

FIELDS = {
    "user": "alice", "download": "my-download", "download_id": 42, "facility": "LILS",
    "investigation": "INV-001", "visit": "1", "dataset": "run-42",
    "datafile": "notes/readme.txt", "transport": "sftp",
}


def test_default_layout():
    assert render_path(DEFAULT_LAYOUT, FIELDS) == \
        "alice/my-download/INV-001/1/run-42/notes/readme.txt"


def test_other_fields_and_format_spec():
    template = "{facility}/{transport}/{download_id:06d}/{datafile}"
    assert render_path(template, FIELDS) == "LILS/sftp/000042/notes/readme.txt"


def test_unicode_names_are_fine():
    fields = dict(FIELDS, dataset="Ünïcødé ☃", datafile="файл 1.txt")
    assert render_path(DEFAULT_LAYOUT, fields).endswith("/Ünïcødé ☃/файл 1.txt")


@pytest.mark.parametrize("template", [
    "{user}/{nope}/{datafile}", "{user.__class__}/{datafile}", "{user[0]}/{datafile}",
    "{user!r}/{datafile}", "{user}/{datafile:{width}}", "{user", "{}/{datafile}",
])
def test_bad_templates_are_configuration_errors(template):
    with pytest.raises(ConfigurationError):
        render_path(template, FIELDS)


def test_missing_field_value():
    with pytest.raises(ConfigurationError, match="visit"):
        render_path(DEFAULT_LAYOUT, dict(FIELDS, visit=None))


def test_slash_only_splits_in_datafile():
    fields = dict(FIELDS, dataset="a/b", download="x/../../etc", investigation="50%")
    rel = render_path(DEFAULT_LAYOUT, fields)
    assert rel == "alice/x%2F..%2F..%2Fetc/50%25/1/a%2Fb/notes/readme.txt"


@pytest.mark.parametrize("datafile", [
    "../../etc/passwd", "a/../../b", "/abs/path", "a//b", "a/./b", ".", "..", "", "a/",
    "back\\slash", "nul\x00byte", "tab\tname", "new\nline", "del\x7f", "c1\x85x", "c1\x9b",
    "line\u2028sep", "x" * 256,
])
def test_unsafe_datafile_names_refused_and_named(datafile):
    with pytest.raises(UnsafePathError) as info:
        render_path(DEFAULT_LAYOUT, dict(FIELDS, datafile=datafile))
    assert repr(datafile)[1:-1][:50] in str(info.value)


@pytest.mark.parametrize("field", ["user", "dataset", "download"])
@pytest.mark.parametrize("value", ["..", ".", "", "a\\b", "a\x00b", "a\rb"])
def test_unsafe_values_in_any_field(field, value):
    with pytest.raises(UnsafePathError):
        render_path(DEFAULT_LAYOUT, dict(FIELDS, **{field: value}))


def test_unsafe_template_literal():
    with pytest.raises(UnsafePathError):
        render_path("../{user}/{datafile}", FIELDS)
    with pytest.raises(UnsafePathError):
        render_path("/{user}/{datafile}", FIELDS)


def test_check_relpath_accepts_dots_inside_names():
    assert check_relpath("a/..b/c..d/.hidden/...") == "a/..b/c..d/.hidden/..."


# --- users ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("icat", "rule", "account"), [
    ("simple/alice", "strip-prefix", "alice"),
    ("alice", "strip-prefix", "alice"),
    ("ldap/a_b-c9", "strip-prefix", "a_b-c9"),
    ("simple/alice", "keep", "simple_alice"),
    ("db/_svc", "strip-prefix", "_svc"),
])
def test_map_user(icat, rule, account):
    assert map_user(icat, rule) == account


def test_mapping_wins_and_is_validated():
    mapping = {"uows/12345": "jdoe", "simple/bob": "Bob"}
    assert map_user("uows/12345", mapping=mapping) == "jdoe"
    assert map_user("simple/alice", mapping=mapping) == "alice"  # falls back to the rule
    with pytest.raises(InvalidUserName, match="simple/bob"):
        map_user("simple/bob", mapping=mapping)
    with pytest.raises(InvalidUserName, match="simple/alice"):
        map_user("simple/alice", "mapping-only", mapping)
    assert map_user("uows/12345", "mapping-only", mapping) == "jdoe"


@pytest.mark.parametrize("icat", [
    "uows/12345", "simple/Alice", "simple/al ice", "simple/../root", "ldap/ou/alice",
    "simple/", "simple/" + "a" * 33, "simple/al\x00ice", "simple/alice$", "simple/ålice",
    "simple/-alice",
])
def test_invalid_accounts_refused_naming_user(icat):
    with pytest.raises(InvalidUserName) as info:
        map_user(icat)
    assert repr(icat) in str(info.value)


def test_unknown_rule():
    with pytest.raises(ConfigurationError):
        map_user("simple/alice", "lowercase")


# --- joining --------------------------------------------------------------------------------


# --- regressions from the hostile-name suite ------------------------------------------------


def test_account_with_a_trailing_newline_is_refused():
    """`re.match` with `$` accepted "eve\\n"; the account must match as a whole."""
    with pytest.raises(InvalidUserName):
        map_user("simple/eve\n")


@pytest.mark.parametrize("icat", ["simple/root", "simple/daemon", "ldap/nobody",
                                  "simple/www-data"])
def test_system_accounts_are_refused_unless_mapped(icat):
    with pytest.raises(InvalidUserName) as info:
        map_user(icat)
    assert "system account" in str(info.value) and icat in str(info.value)
    assert map_user(icat, mapping={icat: "root"}) == "root"  # an operator's explicit choice


@pytest.mark.parametrize("rel", ["dl/.pollcat", "dl/.pollcat/x", "dl/pollcat-manifest.json",
                                 "dl/.pollcat-claim", "dl/pollcat-manifest.json/INV/x"])
def test_reserved_names_below_the_download_dir(rel):
    with pytest.raises(UnsafePathError) as info:
        check_not_reserved(rel, "dl")
    assert rel in str(info.value)


@pytest.mark.parametrize("rel", ["dl/INV/.pollcat", "dl/INV/1/ds/pollcat-manifest.json",
                                 "dl/.pollcatx", "dl/x.pollcat-part"])
def test_reserved_names_only_at_the_first_level(rel):
    assert check_not_reserved(rel, "dl") == rel


def test_reserved_check_refuses_paths_outside_the_download_dir():
    with pytest.raises(UnsafePathError):
        check_not_reserved("other/x", "dl")
