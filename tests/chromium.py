"Headless Chromium driven over the DevTools protocol, for the tests that read pages as a person would (the docs, the service's page)."
import base64, json, os, shutil, subprocess, time, urllib.request
from pathlib import Path
import pytest

def executable() -> str:
    "Debian's chromium; required under CI (`.ci/run` installs it), else the test is skipped"
    exe = shutil.which('chromium') or shutil.which('chromium-browser')
    if exe is None:
        if os.environ.get('CI'): pytest.fail("CI needs Debian's chromium: .ci/run installs it")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    return exe

class Chromium:
    "Headless Chromium driven over the DevTools protocol"
    def __init__(self, exe, profile, size=(1440, 1400)):
        import websocket
        self.proc = subprocess.Popen([exe, '--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--hide-scrollbars',
                                      '--remote-debugging-port=0', f'--user-data-dir={profile}', f'--window-size={size[0]},{size[1]}', 'about:blank'],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file, t0 = Path(profile)/'DevToolsActivePort', time.time()
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.time() - t0 > 60 or self.proc.poll() is not None: raise RuntimeError('chromium did not start')
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        targets = json.loads(urllib.request.urlopen(f'http://127.0.0.1:{port}/json/list', timeout=10).read())
        url = next(t['webSocketDebuggerUrl'] for t in targets if t['type'] == 'page')
        self.ws, self.n = websocket.create_connection(url, timeout=60, suppress_origin=True), 0
        self.send('Page.enable')

    def send(self, method, **params):
        self.n += 1
        self.ws.send(json.dumps(dict(id=self.n, method=method, params=params)))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get('method') == 'Page.loadEventFired': self.loaded = True
            if msg.get('id') == self.n:
                if 'error' in msg: raise RuntimeError(f"{method}: {msg['error']}")
                return msg['result']

    def js(self, expr):
        "Value of the JavaScript `expr` in the page, promises awaited"
        r = self.send('Runtime.evaluate', expression=expr, returnByValue=True, awaitPromise=True)
        if 'exceptionDetails' in r: raise RuntimeError(f"{expr}: {r['exceptionDetails']}")
        return r['result'].get('value')

    def goto(self, url):
        "Open `url`, wait for its load event and for MathJax to finish typesetting"
        self.loaded = False
        self.send('Page.navigate', url=url)
        t0 = time.time()
        while not self.loaded:
            if time.time() - t0 > 60: raise TimeoutError(url)
            if json.loads(self.ws.recv()).get('method') == 'Page.loadEventFired': self.loaded = True
        self.js("window.MathJax?.startup?.promise ?? true")

    def wait(self, expr, timeout=30):
        "Wait until the JavaScript `expr` is truthy in the page, and return its value"
        t0 = time.time()
        while not (v := self.js(expr)):
            if time.time() - t0 > timeout: raise TimeoutError(f'{expr} still {v!r} after {timeout} s')
            time.sleep(0.05)
        return v

    def set_files(self, selector, paths):
        "Choose `paths` in the file input `selector`, as a person picking files would (its `input` and `change` events fire)"
        obj = self.send('Runtime.evaluate', expression=f'document.querySelector({json.dumps(selector)})')['result']
        if 'objectId' not in obj: raise RuntimeError(f'no element {selector}')
        self.send('DOM.setFileInputFiles', files=[str(p) for p in paths], objectId=obj['objectId'])

    def screenshot(self, path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(base64.b64decode(self.send('Page.captureScreenshot', format='png')['data']))

    def close(self):
        self.ws.close()
        self.proc.terminate()
        self.proc.wait(30)
