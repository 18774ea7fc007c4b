"""dqagent.setup.sandbox: what a unit's sandbox hides, the rendered binds, and who may traverse what."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dqagent.setup.sandbox import (
    HOME_ROOTS,
    Access,
    Need,
    Sandbox,
    Stat,
    Who,
    access_problem,
    chain,
    is_under,
    minimal_cover,
    plan,
    render,
)

UNITS = Path(__file__).resolve().parents[2] / "packaging" / "systemd"
AGENT = (UNITS / "dqagent.service").read_text()
WORKER = (UNITS / "dramatiq-worker@.service").read_text()

segment = st.text(alphabet="abcdefgh0._-", min_size=1, max_size=6).filter(lambda s: s not in (".", ".."))
paths = st.builds(lambda root, parts: str(PurePosixPath(root, *parts)),
                  st.sampled_from(["/", "/home", "/root", "/run/user", "/tmp", "/var/tmp", "/opt", "/usr"]),
                  st.lists(segment, min_size=1, max_size=4))


def need(path: str, scope: str | None = None, access: Access = Access.READ) -> Need:
    return Need(path=path, why="the thing", access=access, scope=scope or path)


def test_shipped_units_parse_as_written() -> None:
    assert Sandbox.parse(AGENT) == Sandbox(protect_home="yes", private_tmp=True, protect_system="strict")
    assert Sandbox.parse(WORKER) == Sandbox(protect_home="read-only", private_tmp=True, protect_system="full")
    assert Sandbox.parse("ProtectHome=true\nInaccessiblePaths=/srv -/mnt\nInaccessiblePaths=/a\n").inaccessible \
        == ("/srv", "/mnt", "/a")


def test_venv_under_root_renders_tmpfs_with_exactly_the_needed_binds() -> None:
    needs = [need("/root/venv/bin/dqagent", "/root/venv", Access.EXEC), need("/root/venv/lib", "/root/venv"),
             need("/root/src/dqagent"), need("/usr/lib/python3.11")]
    p = plan("dqagent.service", Sandbox.parse(AGENT), needs)
    assert (p.protect_home, p.binds, p.refusals) == ("tmpfs", ("/root/src/dqagent", "/root/venv"), ())
    text = render(AGENT, p)
    assert "ProtectHome=tmpfs\nBindReadOnlyPaths=/root/src/dqagent\nBindReadOnlyPaths=/root/venv\n" in text
    assert "ProtectHome=yes" not in text
    assert Sandbox.parse(text).protect_home == "tmpfs"


def test_nothing_under_a_home_renders_the_unit_unchanged() -> None:
    p = plan("dqagent.service", Sandbox.parse(AGENT), [need("/opt/dqagent/bin/dqagent", "/opt/dqagent")])
    assert p.binds == () and p.protect_home == "yes"
    assert render(AGENT, p) == AGENT


def test_tmp_is_refused_with_path_reason_and_fix() -> None:
    p = plan("dramatiq-worker@.service", Sandbox.parse(WORKER),
             [Need("/tmp/app/bin/python", "DRAMATIQ_COMMAND's executable", Access.EXEC, "/tmp/app")])
    (refusal,) = p.refusals
    line = refusal.line()
    assert line.startswith("/tmp/app/bin/python: DRAMATIQ_COMMAND's executable is under /tmp")
    assert "PrivateTmp=yes" in line and "fix: move it out of /tmp" in line and "\n" not in line


def test_inaccessible_paths_and_unsafe_characters_are_refused() -> None:
    sandbox = Sandbox(protect_home="yes", inaccessible=("/srv/secret",))
    assert plan("u", sandbox, [need("/srv/secret/app")]).refusals[0].why.endswith("(InaccessiblePaths=/srv/secret)")
    assert "cannot carry" in plan("u", sandbox, [need("/opt/my app")]).refusals[0].why


@given(st.lists(paths, min_size=1, max_size=8))
def test_every_need_is_visible_after_the_plan_unless_refused(ps: list[str]) -> None:
    sandbox = Sandbox.parse(AGENT)
    needs = [need(p, str(PurePosixPath(p).parent)) for p in ps]
    p = plan("dqagent.service", sandbox, needs)
    refused = {r.path for r in p.refusals}
    for n in needs:
        if n.path in refused:
            assert any(is_under(n.path, t) for t in ("/tmp", "/var/tmp"))
            continue
        under_home = any(is_under(n.path, h) for h in HOME_ROOTS)
        # visible: either not under a home at all, or inside one of the binds
        assert not under_home or any(is_under(n.path, b) for b in p.binds)
    # binds are exactly needed scopes (no home root wholesale, none nested in another)
    assert all(b in {n.scope for n in needs} | {n.path for n in needs} for b in p.binds)
    assert all(not is_under(a, b) for a in p.binds for b in p.binds if a != b)
    assert all(b not in HOME_ROOTS for b in p.binds)
    assert (p.protect_home == "tmpfs") == bool(p.binds)


@given(st.lists(paths, max_size=10))
def test_minimal_cover_covers_everything_with_nothing_nested(ds: list[str]) -> None:
    cover = minimal_cover(ds)
    assert all(any(is_under(d, c) for c in cover) for d in ds)
    assert all(not is_under(a, b) for a in cover for b in cover if a != b)
    assert set(cover) <= set(ds)


def _tree(path: str, modes: dict[str, int], file_mode: int = 0o755) -> dict[str, Stat]:
    stats = {p: Stat(mode=0o40000 | modes.get(p, 0o755), uid=0, gid=0, is_dir=True) for p in chain(path)[:-1]}
    stats[path] = Stat(mode=0o100000 | file_mode, uid=0, gid=0, is_dir=False)
    return stats


DQAGENT_USER = Who("dqagent", 998, frozenset({998}))


def test_root_home_0700_blocks_a_user_without_binds_and_not_with_them() -> None:
    exe = need("/root/venv/bin/dqagent", "/root/venv", Access.EXEC)
    stats = _tree(exe.path, {"/root": 0o700})
    problem = access_problem(exe, DQAGENT_USER, "dqagent.service", stats)
    assert problem is not None and problem.path == "/root"
    assert problem.line().startswith("/root: not traversable (on the way to the thing) by user dqagent "
                                     "(mode 0700, owner uid 0), which dqagent.service runs as; fix: chmod o+x /root")
    # with /root/venv bound on ProtectHome=tmpfs, /root is the tmpfs (0755)
    assert access_problem(exe, DQAGENT_USER, "dqagent.service", stats, binds=["/root/venv"]) is None


def test_inside_the_bind_the_hosts_modes_still_apply() -> None:
    exe = need("/root/venv/bin/dqagent", "/root/venv", Access.EXEC)
    stats = _tree(exe.path, {"/root/venv/bin": 0o700})
    problem = access_problem(exe, DQAGENT_USER, "dqagent.service", stats, binds=["/root/venv"])
    assert problem is not None and problem.path == "/root/venv/bin"


def test_executable_bit_and_missing_user_basis() -> None:
    exe = need("/opt/v/bin/python", access=Access.EXEC)
    stats = _tree(exe.path, {}, file_mode=0o750)
    ghost = Who("dqworker", None, frozenset())
    problem = access_problem(exe, ghost, "dramatiq-worker@.service", stats)
    assert problem is not None and "not executable" in problem.why and "does not exist yet" in problem.why
    owner = Who("app", 0, frozenset({0}))  # root without capabilities: owner bits
    assert access_problem(exe, owner, "u", stats) is None
    grouped = Who("app", 1000, frozenset({0}))
    assert access_problem(exe, grouped, "u", stats) is None
    assert access_problem(need("/opt/none"), DQAGENT_USER, "u", {}) is not None


@given(st.dictionaries(st.sampled_from(chain("/a/b/c/d")[:-1]), st.integers(0, 0o777)),
       st.integers(0, 0o777))
def test_access_is_granted_exactly_when_every_other_bit_allows(modes: dict[str, int], fmode: int) -> None:
    stats = _tree("/a/b/c/d", modes, file_mode=fmode)
    who = Who("nobody", 65534, frozenset({65534}))
    ok = all(m & 1 for m in modes.values()) and fmode & 5 == 5
    result = access_problem(need("/a/b/c/d", "/a", Access.EXEC), who, "u", stats)
    assert (result is None) == ok


@pytest.mark.parametrize("text", [AGENT, WORKER])
def test_render_keeps_every_other_line(text: str) -> None:
    p = plan("u", Sandbox.parse(text), [need("/home/app/venv", "/home/app/venv")])
    out = render(text, p)
    assert [ln for ln in out.splitlines() if "ProtectHome" not in ln and "BindReadOnly" not in ln
            and not ln.startswith("# ")] == \
        [ln for ln in text.splitlines() if "ProtectHome" not in ln and not ln.startswith("# ")]


# --- METRICS_TEXTFILE's directory: written through ProtectSystem=strict ------------------

def test_a_write_need_renders_read_write_paths_after_protect_system() -> None:
    p = plan("dqagent.service", Sandbox.parse(AGENT), [need("/var/lib/node-exporter", access=Access.WRITE),
                                                       need("/var/lib/node-exporter/sub", access=Access.WRITE)])
    assert (p.writable, p.binds, p.refusals, p.protect_home) == (("/var/lib/node-exporter",), (), (), "yes")
    text = render(AGENT, p)
    assert "ProtectSystem=strict\n# Rendered by dqagent install: directories the agent writes (METRICS_TEXTFILE's)." \
           "\nReadWritePaths=-/var/lib/node-exporter\n" in text
    assert text.replace("# Rendered by dqagent install: directories the agent writes (METRICS_TEXTFILE's).\n"
                        "ReadWritePaths=-/var/lib/node-exporter\n", "") == AGENT


def test_a_write_need_under_tmp_or_a_home_is_refused_in_one_line() -> None:
    p = plan("dqagent.service", Sandbox.parse(AGENT), [need("/tmp/textfile", access=Access.WRITE),
                                                       need("/home/ops/prom", access=Access.WRITE)])
    assert p.writable == () and len(p.refusals) == 2
    tmp, home = (r.line() for r in p.refusals)
    assert tmp.startswith("/tmp/textfile: the thing is under /tmp") and "PrivateTmp=yes" in tmp
    assert home.startswith("/home/ops/prom: the thing is under /home") and "ProtectHome=yes" in home
    assert "\n" not in tmp + home


def test_a_write_need_wants_write_and_search_on_the_directory_itself() -> None:
    dqagent = Who("dqagent", 990, frozenset({990}))
    root_dir = Stat(mode=0o40755, uid=0, gid=0, is_dir=True)
    stats = {"/": root_dir, "/var": root_dir, "/var/lib": root_dir,
             "/var/lib/prom": Stat(mode=0o40755, uid=0, gid=0, is_dir=True)}
    problem = access_problem(need("/var/lib/prom", access=Access.WRITE), dqagent, "dqagent.service", stats)
    assert problem is not None and "not writable" in problem.line() and "chgrp dqagent /var/lib/prom" in problem.fix
    stats["/var/lib/prom"] = Stat(mode=0o40775, uid=0, gid=990, is_dir=True)
    assert access_problem(need("/var/lib/prom", access=Access.WRITE), dqagent, "dqagent.service", stats) is None
    missing = access_problem(need("/var/lib/nope", access=Access.WRITE), dqagent, "dqagent.service", stats)
    assert missing is not None and missing.missing
