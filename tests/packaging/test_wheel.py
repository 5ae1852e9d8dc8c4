"""The built distributions: metadata that passes `twine check`, the shipped data files equal to the one real
copy in the source tree (in the sdist, the wheel and the installed package), `--version` on every console
script, and `keyrelay-stack` run from the wheel in a directory outside the source tree, answering one real
request through Envoy, ext_authz and the translator."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile

import anthropic
import pytest

from keyrelay_stack.cli import DEMO_KEY
from keyrelay_stack.version import UNINSTALLED, package_version
from tests.packaging.conftest import PROJECT, REPO, SESSION_BUDGET_S, SHIPPED, run
from tests.support.procs import PROVIDER_ENV_PREFIXES, SERVICE_ENV_PREFIXES, Proc, child_env, free_port

STACK_READY_S = 120
pytestmark = pytest.mark.timeout(SESSION_BUDGET_S)


def outside_env() -> dict[str, str]:
    """An environment in which nothing points back at the source tree or this session's virtualenv."""
    return child_env(drop=PROVIDER_ENV_PREFIXES + SERVICE_ENV_PREFIXES + ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"))


def test_metadata_passes_twine_check(dist):
    proc = run([sys.executable, "-m", "twine", "check", "--strict", str(dist.sdist), str(dist.wheel)], "twine check")
    assert proc.stdout.count("PASSED") == 2, proc.stdout


def test_distribution_names_carry_the_project_version(dist):
    version = PROJECT["version"]
    assert dist.wheel.name == f"keyrelay-{version}-py3-none-any.whl"
    assert dist.sdist.name == f"keyrelay-{version}.tar.gz"


@pytest.mark.parametrize("shipped,source", sorted(SHIPPED.items()))
def test_source_tree_entry_is_a_symlink_to_the_one_real_copy(shipped, source):
    entry, real = REPO / shipped, REPO / source
    assert entry.is_symlink(), f"{shipped} must be a symlink to {source}, not a copy"
    assert not real.is_symlink() and entry.resolve() == real.resolve()


def test_every_shipped_data_file_is_listed():
    data = REPO / "keyrelay_stack" / "data"
    assert {str(p.relative_to(REPO)) for p in data.iterdir()} == set(SHIPPED)


@pytest.mark.parametrize("shipped,source", sorted(SHIPPED.items()))
def test_shipped_bytes_equal_the_source_in_wheel_sdist_and_install(dist, installed, shipped, source):
    expected = (REPO / source).read_bytes()
    with zipfile.ZipFile(dist.wheel) as whl:
        info = whl.getinfo(shipped)
        assert (info.external_attr >> 16) & 0o170000 != 0o120000, "the wheel must hold the file, not a link"
        assert whl.read(info) == expected
    with tarfile.open(dist.sdist) as sdist:
        member = sdist.getmember(f"{dist.sdist.name.removesuffix('.tar.gz')}/{shipped}")
        assert member.isfile(), "the sdist must hold the file, not a link that points outside it"
        assert sdist.extractfile(member).read() == expected
    installed_file = installed.site_packages / shipped
    assert not installed_file.is_symlink() and installed_file.read_bytes() == expected


@pytest.mark.parametrize("script", sorted(PROJECT["scripts"]))
def test_every_console_script_prints_the_package_version(installed, tmp_path, script):
    proc = subprocess.run([str(installed.script(script)), "--version"], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path, env=outside_env())
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, f"{script} {PROJECT['version']}\n", "")


def test_version_of_an_uninstalled_tree_is_marked_unknown():
    assert package_version("keyrelay-not-installed") == UNINSTALLED
    assert package_version() == PROJECT["version"]


def test_stack_defaults_point_at_the_installed_package_data(installed, tmp_path):
    code = ("import keyrelay_stack, ext_authz, translator\n"
            "from keyrelay_stack import cli\n"
            "ns = cli.parse_args([])\n"
            "for p in (keyrelay_stack.__file__, ext_authz.__file__, translator.__file__, ns.envoy_config,\n"
            "          cli.DEFAULT_POLICY): print(p)\n")
    proc = subprocess.run([str(installed.python), "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path, env=outside_env())
    assert proc.returncode == 0, proc.stderr
    paths = proc.stdout.split()
    assert len(paths) == 5
    for path in paths:
        assert path.startswith(str(installed.site_packages) + "/"), path


def test_stack_from_the_wheel_serves_a_message_from_another_directory(installed, tmp_path):
    """`keyrelay-stack` with make run's defaults (demo upstream, the packaged example policy and envoy.yaml);
    only the ports are moved to free ones so that the run does not collide with anything on this machine."""
    port = free_port()
    argv = [str(installed.script("keyrelay-stack")), "--port", str(port), "--admin-port", str(free_port()),
            "--ext-authz-port", str(free_port()), "--ext-authz-http-port", str(free_port()),
            "--translator-port", str(free_port()), "--envoy-concurrency", "1"]
    proc = Proc(argv, outside_env(), name="keyrelay-stack (wheel)", cwd=tmp_path)
    try:
        proc.wait_ready(STACK_READY_S)
        assert f"ready: stack on http://127.0.0.1:{port}" in proc.lines, proc.output[-3000:]
        assert "DEMO MODE" in proc.output
        assert any(line.startswith("[stack] policy: examples/policy.yaml: a key is required") for line in proc.lines)
        rendered_from = f"[stack] envoy config rendered from {installed.site_packages}/keyrelay_stack/data/envoy.yaml"
        assert any(line.startswith(rendered_from) for line in proc.lines), proc.output[-3000:]

        client = anthropic.Anthropic(base_url=f"http://127.0.0.1:{port}", api_key=DEMO_KEY, max_retries=0,
                                     timeout=30.0)
        reply = client.messages.create(model="claude-sonnet-4-5", max_tokens=64,
                                       messages=[{"role": "user", "content": "hello"}])
        assert "keyrelay demo upstream" in reply.content[0].text
        # The example policy is in force: no key, no answer (the 401 comes from ext_authz through Envoy).
        with pytest.raises(anthropic.AuthenticationError):
            anthropic.Anthropic(base_url=f"http://127.0.0.1:{port}", api_key="", max_retries=0,
                                default_headers={"X-Api-Key": anthropic.Omit(), "Authorization": anthropic.Omit()},
                                ).messages.create(model="claude-sonnet-4-5", max_tokens=8,
                                                  messages=[{"role": "user", "content": "hello"}])
    finally:
        code = proc.stop(timeout=20)
    assert code == 0, proc.output[-3000:]
    assert proc.lines[-1] == "[stack] stopped"


def test_image_build_context_holds_what_the_data_links_point_to():
    """The Dockerfile's builder runs `pip wheel .`: the links in keyrelay_stack/data/ resolve there only if their
    targets are copied to the same relative place and not excluded by .dockerignore."""
    from tests.k8s.test_dockerfile import DOCKERFILE, DOCKERIGNORE, ignored, stages

    patterns = [ln.strip() for ln in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
                if ln.strip() and not ln.startswith("#")]
    builder = stages(DOCKERFILE.read_text(encoding="utf-8"))[1][0]
    copies = {}
    for inst, rest in builder.instructions:
        if inst == "COPY":
            src, dest = rest.split()[-2:]
            copies[src] = dest
    for source in SHIPPED.values():
        assert copies.get(source) == f"./{source}", f"the builder stage must COPY {source} to ./{source}"
        assert not ignored(source, patterns), f".dockerignore excludes {source}"
