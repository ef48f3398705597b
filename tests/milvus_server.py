"A real Milvus server for the tests: PyPI's `milvus` wheel (Milvus 2.3 standalone, one process) in a folder, on free loopback ports"
import os, signal, socket, subprocess, time, urllib.request
from pathlib import Path

def free_port() -> int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

class MilvusServer:
    "Start a Milvus standalone server whose files live in `base`, with `settings` of its milvus.yaml; `uri` is where pymilvus finds it"
    def __init__(self, base, timeout:float=180, **settings):
        from milvus import MilvusServer as Server, MilvusServerConfig
        self.base,self.timeout = Path(base),timeout
        config = MilvusServerConfig()
        # every port the server's config names, and its embedded etcd's two, free ones: another server beside it (another
        # session's, or the wheel's default 19530) clashes with nothing
        config.update(**{k: free_port() for k in config.configurable_items if k.endswith('_port')})
        # its parts advertise loopback to each other (Milvus 2.3's gRPC servers still listen on every interface: no setting binds them)
        for part in ('rootCoord', 'proxy', 'queryCoord', 'queryNode', 'indexNode', 'dataCoord', 'dataNode'):
            config.set(f'{part}.ip', '127.0.0.1')
        for k,v in settings.items(): config.set(k, v)  # a setting of its milvus.yaml by its dotted name, e.g. 'proxy.timeTickInterval'
        self.server = Server(config, wait_for_started=False)
        self.server.set_base_dir(str(self.base))
        self.server.webservice_port = free_port()  # its health and metrics port, searched upwards from here
        client,peer = free_port(),free_port()
        etcd = self.base/'configs'/'embed_etcd.yaml'
        etcd.write_text(f"listen-client-urls: http://127.0.0.1:{client}\nadvertise-client-urls: http://127.0.0.1:{client}\n"
                        f"listen-peer-urls: http://127.0.0.1:{peer}\ninitial-advertise-peer-urls: http://127.0.0.1:{peer}\n"
                        f"initial-cluster: default=http://127.0.0.1:{peer}\n")
        self.env = dict(ETCD_CONFIG_PATH=str(etcd))

    def start(self) -> str:
        "Start the server and wait until it answers; its URI"
        old = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)  # the wheel passes its own environment on: the embedded etcd's config goes that way
        try: self.server.start()
        finally:
            for k,v in old.items():
                if v is None: os.environ.pop(k)
                else: os.environ[k] = v
        self._wait()
        return self.uri

    def _wait(self):
        "Until the server is healthy and answers a client; an error at once if it exits (the wheel's own wait goes on to its timeout)"
        from pymilvus import MilvusClient
        health,t0 = f'http://127.0.0.1:{self.server.webservice_port}/healthz',time.monotonic()
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy of the environment
        while time.monotonic() - t0 < self.timeout:
            if (rc := self.server.server_proc.poll()) is not None:
                raise RuntimeError(f"the Milvus server exited with code {rc}: see {self.base/'logs'}")
            try:
                with direct.open(health, timeout=5) as r:
                    if b'OK' in r.read():
                        c = MilvusClient(self.uri, timeout=10); c.list_collections(); c.close()
                        return
            except Exception: time.sleep(.2)  # not up yet
        raise TimeoutError(f"the Milvus server did not answer in {self.timeout} s: see {self.base/'logs'}")

    @property
    def uri(self) -> str: return f'http://127.0.0.1:{self.server.listen_port}'
    @property
    def pid(self) -> int|None: return self.server.server_proc.pid if self.server.server_proc else None

    def stop(self, grace:float=1):
        "Ask the server to stop, kill it if it has not within `grace` seconds (its parts may wait on each other for minutes), close its logs"
        p = self.server.server_proc
        if p is None: return
        p.send_signal(signal.SIGTERM)
        try: p.wait(grace)
        except subprocess.TimeoutExpired: p.kill(); p.wait(10)
        self.server.stop()  # the process is gone: this closes the log files
