"""Screenshots of what a student sees in TensorBoard: ``bnexp tb`` on a folder of runs, opened in
Debian's headless Chromium, driven over the DevTools protocol (a plain ``chromium --headless
--screenshot`` captures TensorBoard's charts empty: the app draws after the page "loads").

    .venv/bin/python scripts/tb_screenshots.py LOGDIR --out /tmp/tb_png
    .venv/bin/python scripts/tb_screenshots.py --demo --data-root ../shared/data --out /tmp/tb_png

``--demo`` trains a small sweep first (model=mlp norm=none,torch,custom, a few hundred images)
and one default-architecture CNN run into a temporary folder. Saves first.png (the URL
``bnexp tb`` prints), hparams.png, custom_scalars.png, distributions.png and plain.png (the
server's root URL) and prints their paths. Install Chromium with
``scripts/setup.sh --with-chromium`` (or ``apt-get install chromium``).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BNEXP = [sys.executable, "-m", "bnexp.cli"]
PAGES = {  # file name -> what to append to the server's root URL ("" = the printed URL)
    "first": None,
    "hparams": "#hparams",
    "custom_scalars": "#custom_scalars&_smoothingWeight=0",
    "distributions": "#distributions",
    "plain": "",
}


# The visible text of the page, into shadow roots (TensorBoard's Polymer dashboards), in order.
DEEP_TEXT = """(function walk(node) {
  let text = "";
  if (node.shadowRoot) text += walk(node.shadowRoot);
  for (const child of node.childNodes) {
    if (child.nodeType === 3) text += child.textContent.trim() ? child.textContent.trim() + "\\n" : "";
    else if (!["SCRIPT", "STYLE"].includes(child.nodeName)) text += walk(child);
  }
  return text;
})(document.body)"""


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Chromium:
    """A headless Chromium driven over ``--remote-debugging-pipe`` (fds 3 and 4, messages
    ending in NUL): one page, navigated and captured on request."""

    def __init__(self, binary: str, width: int = 1600, height: int = 1000) -> None:
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        self.profile = tempfile.mkdtemp(prefix="bnexp-chromium-")
        args = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-dev-shm-usage", "--hide-scrollbars", "--remote-debugging-pipe",
                f"--user-data-dir={self.profile}", f"--window-size={width},{height}"]
        self.proc = os.posix_spawn(binary, args, os.environ, file_actions=[
            (os.POSIX_SPAWN_DUP2, to_child_r, 3), (os.POSIX_SPAWN_DUP2, from_child_w, 4),
            (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
            (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0)])
        os.close(to_child_r)
        os.close(from_child_w)
        self._buffer, self._next_id = b"", 0
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target,
                                 flatten=True)["sessionId"]
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                  deviceScaleFactor=1, mobile=False, session=True)

    def call(self, method: str, session: bool = False, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._to_child, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def _read(self) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            chunk = os.read(self._from_child, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed its DevTools pipe")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def screenshot(self, url: str, path: Path, wait_s: float) -> Path:
        """Open ``url``, wait ``wait_s`` seconds of real time (TensorBoard fetches and draws
        after the page has loaded), save a PNG of the viewport and, beside it (``.txt``), the
        page's text, shadow DOMs included (what a test can check)."""
        self.call("Page.navigate", url=url, session=True)
        time.sleep(wait_s)
        data = self.call("Page.captureScreenshot", format="png", session=True)["data"]
        path.write_bytes(base64.b64decode(data))
        text = self.call("Runtime.evaluate", expression=DEEP_TEXT, returnByValue=True,
                         session=True)["result"].get("value", "")
        path.with_suffix(".txt").write_text(text)
        return path

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (RuntimeError, OSError):
            pass
        try:
            os.waitpid(self.proc, 0)
        except ChildProcessError:
            pass
        for fd in (self._to_child, self._from_child):
            os.close(fd)
        shutil.rmtree(self.profile, ignore_errors=True)


def start_tb(logdir: Path) -> tuple[subprocess.Popen, str]:
    """``bnexp tb LOGDIR --port 0``; returns the process and the URL it printed."""
    proc = subprocess.Popen([*BNEXP, "tb", str(logdir), "--port", "0", "--host", "127.0.0.1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    found = re.search(r"http://\S+", line)
    if not found:
        proc.terminate()
        raise RuntimeError(f"bnexp tb printed no URL: {line!r} {proc.stderr.read()[-2000:]}")
    return proc, found.group(0)


def capture(logdir: Path, out: Path, wait_s: float = 15.0,
            chromium: str | None = None) -> dict[str, Path]:
    """Every page of PAGES as ``out/<name>.png``; returns {name: path} and the printed URL in
    ``out/url.txt``."""
    binary = chromium or find_chromium()
    if binary is None:
        raise RuntimeError("Chromium not found: run scripts/setup.sh --with-chromium")
    out.mkdir(parents=True, exist_ok=True)
    proc, url = start_tb(logdir)
    (out / "url.txt").write_text(url + "\n")
    root = url.split("?")[0].split("#")[0].rstrip("/") + "/"
    shots = {}
    browser = Chromium(binary)
    try:
        for name, suffix in PAGES.items():
            page = url if suffix is None else root + suffix
            shots[name] = browser.screenshot(page, out / f"{name}.png", wait_s)
    finally:
        browser.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    return shots


def train_demo(folder: Path, data_root: Path, extra: list[str]) -> None:
    """The issue's scenario, small: a norm sweep of the MLP and one default CNN run."""
    common = [f"data.root={data_root}", f"output_dir={folder}", "trainer.progress=none",
              "trainer.checkpoint=false", *extra]
    subprocess.run([*BNEXP, "train", "-m", "model=mlp", "norm=none,torch,custom", "seed=0",
                    *common], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([*BNEXP, "train", *common], check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("logdir", nargs="?", type=Path, help="folder of runs (bnexp tb LOGDIR)")
    parser.add_argument("--out", type=Path, default=Path("outputs/tb_screenshots"))
    parser.add_argument("--wait", type=float, default=15.0, help="seconds per page")
    parser.add_argument("--demo", action="store_true", help="train a small sweep first")
    parser.add_argument("--data-root", type=Path, default=Path("data"))
    parser.add_argument("--demo-overrides", nargs="*", default=[
        "trainer.epochs=2", "data.train_size=2000", "probe.every=10", "probe.hist_every=20"])
    args = parser.parse_args()
    logdir = args.logdir
    if args.demo:
        logdir = Path(tempfile.mkdtemp(prefix="bnexp-tb-demo-"))
        train_demo(logdir, args.data_root, args.demo_overrides)
    if logdir is None:
        parser.error("pass LOGDIR or --demo")
    for name, path in capture(logdir, args.out, args.wait).items():
        print(f"{name}: {path}")
    print(f"url: {(args.out / 'url.txt').read_text().strip()}")


if __name__ == "__main__":
    main()
