"""The `netlang` command: exit codes, output text, files written."""

from __future__ import annotations

import json
import subprocess
import sys

from netlang.cli import main
from tests.conftest import EXAMPLES, requires_dot

BAD = """network n {
    input x: [1, 8, 8]
    output y = x -> conv(4, 3, strde=2)
}
"""


def test_check_ok(capsys):
    assert main(["check", str(EXAMPLES / "simple_cnn.net")]) == 0
    assert "ok: network simple_cnn: 545,098 parameters; outputs logits [10]" in \
        capsys.readouterr().out


def test_check_error_exit_code_and_text(tmp_path, capsys):
    f = tmp_path / "bad.net"
    f.write_text(BAD)
    assert main(["check", str(f)]) == 1
    err = capsys.readouterr().err
    assert "error[E011]: `conv` has no argument `strde`" in err
    assert f"--> {f}:3:32" in err
    assert "3 |     output y = x -> conv(4, 3, strde=2)" in err
    assert "help: did you mean `stride`?" in err
    assert "Traceback" not in err


def test_check_missing_file(capsys):
    assert main(["check", "does/not/exist.net"]) == 1
    assert "error[E004]: no such file" in capsys.readouterr().err


def test_check_every_network_of_a_file(capsys):
    assert main(["check", str(EXAMPLES / "resnet18.net")]) == 0
    out = capsys.readouterr().out
    assert "network resnet18:" in out and "network resnet18_cifar:" in out


def test_set_overrides(capsys):
    assert main(["check", str(EXAMPLES / "unet.net"), "--set", "base=16", "--set",
                 "size=128"]) == 0
    assert "outputs mask [1, 128, 128]" in capsys.readouterr().out
    assert main(["check", str(EXAMPLES / "unet.net"), "--set", "bse=16"]) == 1
    assert "did you mean `base`?" in capsys.readouterr().err


def test_summary_table_and_json(capsys):
    assert main(["summary", str(EXAMPLES / "lenet5.net"), "--batch", "64"]) == 0
    out = capsys.readouterr().out
    assert "features.conv0" in out and "trainable params:     61,706" in out
    assert main(["summary", str(EXAMPLES / "lenet5.net"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["trainable_params"] == 61_706
    conv = next(r for r in data["rows"] if r["name"] == "features.conv0")
    assert conv["shape"] == [6, 28, 28] and conv["params"] == 156
    assert conv["macs"] == 6 * 28 * 28 * 25
    assert data["inputs"] == {"image": [1, 28, 28]}


def test_viz_writes_dot(tmp_path, capsys):
    out = tmp_path / "net.dot"
    assert main(["viz", str(EXAMPLES / "unet.net"), "-o", str(out)]) == 0
    dot = out.read_text()
    assert dot.startswith('digraph "unet"') and "cluster_" in dot
    assert "[64, 256, 256]" in dot  # shapes on edges


@requires_dot
def test_viz_renders_svg(tmp_path):
    out = tmp_path / "net.svg"
    assert main(["viz", str(EXAMPLES / "lenet5.net"), "-o", str(out)]) == 0
    assert out.read_text().lstrip().startswith("<?xml") and out.with_suffix(".dot").exists()


def test_python_dash_m():
    res = subprocess.run([sys.executable, "-m", "netlang", "check",
                          str(EXAMPLES / "lenet5.net")], capture_output=True, text=True)
    assert res.returncode == 0 and "ok: network lenet5" in res.stdout


def test_grammar_is_one_source_of_truth():
    from netlang.lang.parser import grammar_text
    from tests.conftest import ROOT

    assert (ROOT / "grammars" / "netlang.lark").read_text() == grammar_text()
