"""`fedper.engines.warm`: a task process forked from the warm one forgets fedper's modules (the
run's FAB supplies them) but keeps the libraries, and hands Flower's `run_clientapp` the task
as `flwr-clientapp` would; the command line asks for the Runtime API and how to reach it, and
the launcher stops in one line once its SuperNode has ended."""

import json
import subprocess
import sys

import pytest

from fedper.engines.warm import parse_args

TASK = """
import json, sys
import fedper.client_app  # what the warm process has imported
import flwr.supernode.runtime.run_clientapp as runtime
from flwr.supercore.constant import TaskType
from flwr.supercore.superexec.executor import ExecutionSpec
from fedper.engines.warm import serve_task

seen = {}
def run_clientapp(**kwargs):
    seen.update(kwargs, certificates=kwargs["certificates"].decode(),
                fedper=sorted(m for m in sys.modules if m.split(".")[0] == "fedper"),
                torch="torch" in sys.modules)
runtime.run_clientapp = run_clientapp
spec = ExecutionSpec(task_type=TaskType.CLIENT_APP, runtime_api_address="127.0.0.1:9094",
                     token="abc", insecure=False, root_certificates_path="ca.crt",
                     runtime_dependency_install=True, parent_pid=4242, suppress_output=False,
                     task_id=7)
serve_task(spec, b"CA")
print(json.dumps(seen))
"""


def test_a_task_process_loads_fedper_afresh_and_runs_the_task_it_was_given():
    done = subprocess.run([sys.executable, "-c", TASK], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["fedper"] == []  # Flower imports the ClientApp from the run's FAB
    assert seen["torch"]  # the libraries stay imported: that is the point
    assert seen["runtime_api_address"] == "127.0.0.1:9094" and seen["token"] == "abc"
    assert (seen["insecure"], seen["certificates"], seen["parent_pid"]) == (False, "CA", 4242)
    assert seen["runtime_dependency_install"] is False  # a warm process cannot change them


def test_the_command_line_needs_the_runtime_api_and_how_to_reach_it(tmp_path, capsys):
    args = parse_args(["--runtime-api-address", "127.0.0.1:9094", "--insecure"])
    assert args.insecure and args.root_certificates is None and args.poll_seconds > 0
    (tmp_path / "ca.crt").write_text("CA")
    args = parse_args(["--runtime-api-address", "node:9094", "--root-certificates",
                       str(tmp_path / "ca.crt"), "--poll-seconds", "0.5"])  # fmt: skip
    assert (args.insecure, args.poll_seconds) == (False, 0.5)
    address, ca = ["--runtime-api-address", "127.0.0.1:9094"], str(tmp_path / "ca.crt")
    refused = {
        "required: --runtime-api-address": ["--insecure"],
        "one of the arguments --insecure --root-certificates": address,
        "not allowed with argument": [*address, "--insecure", "--root-certificates", ca],
        "'localhost' is not host:port": ["--runtime-api-address", "localhost", "--insecure"],
        "not a file": [*address, "--root-certificates", str(tmp_path / "missing.crt")],
        "seconds in (0, 60]": [*address, "--insecure", "--poll-seconds", "0"],
    }
    for said, argv in refused.items():
        with pytest.raises(SystemExit) as stopped:
            parse_args(argv)
        assert stopped.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert said in err[-1], err  # one line, after the usage


def test_it_stops_in_one_line_when_its_supernode_has_ended():
    supernode = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                                 stdin=subprocess.PIPE)  # fmt: skip
    # nothing listens on port 1: it keeps asking, as it would while its SuperNode starts
    launcher = subprocess.Popen(
        [sys.executable, "-m", "fedper.engines.warm", "--runtime-api-address", "127.0.0.1:1",
         "--insecure", "--parent-pid", str(supernode.pid)],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    supernode.communicate(input="")  # the stand-in ends and is reaped
    _, err = launcher.communicate(timeout=300)
    assert launcher.returncode == 0, err[-3000:]
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"fedper.engines.warm: stopped: its SuperNode (process {supernode.pid}) has ended"
    )
