"""``kmssl serve-demo``: the browser tagger (``keras_music_ssl/web/``) for an ONNX tagger, served locally.

    kmssl export --preset my_preset/ --head probe.keras --format onnx --out tagger_onnx/
    kmssl serve-demo --model tagger_onnx/                  # then open http://127.0.0.1:8000/
    kmssl serve-demo --model tagger_onnx/ --port 0         # any free port (printed)

The standard library's ``http.server`` serves three folders, nothing else (no listings):

    /          the page: index.html, app.js, style.css (installed with the package)
    /model/    the --model folder (clips.onnx, track.onnx, keras_music_ssl.json, tags.txt)
    /ort/      onnxruntime-web's WASM build: ORT_WEB_FILES of the pinned ORT_WEB_VERSION

The page runs onnxruntime-web single-threaded (no SharedArrayBuffer), so it needs no
cross-origin isolation headers. onnxruntime-web comes from, in this order: ``--ort-dir``; a source
checkout's ``js/node_modules/onnxruntime-web/dist`` (``npm ci`` in js/, which ``bootstrap.py``
runs; js/package-lock.json pins the same version); the cache
``~/.cache/keras_music_ssl/onnxruntime-web-VERSION/``, filled on first use from the npm
registry's tarball of that version, checked against its sha512 (``ORT_WEB_INTEGRITY``, the
lock file's ``integrity``) before anything is unpacked.
"""

import base64
import hashlib
import http.server
import json
import os
import pathlib
import posixpath
import shutil
import sys
import tarfile
import tempfile
import urllib.parse

HELP = "Serve the browser tagger (onnxruntime-web) for an ONNX tagger export on a local web server."

ORT_WEB_VERSION = "1.31.1"
# The npm tarball's integrity (the registry's dist.integrity; js/package-lock.json holds the same).
ORT_WEB_INTEGRITY = ("sha512-5GeH+bWQ+HxM10z7erGlsWqryrwMbSvm/1tkIsKTT48g0fI19VXVVC435t4t7VsPdSQeS7NmuZPXrQ73k82URw==")
ORT_WEB_URL = f"https://registry.npmjs.org/onnxruntime-web/-/onnxruntime-web-{ORT_WEB_VERSION}.tgz"
# What the page loads: the WASM-only ES module, its Emscripten glue and the WASM binary (~15 MB).
ORT_WEB_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")

WEB_DIR = pathlib.Path(__file__).resolve().parents[1] / "web"
WEB_FILES = ("index.html", "app.js", "style.css")
CHECKOUT_ORT_DIR = pathlib.Path(__file__).resolve().parents[2] / "js" / "node_modules" / "onnxruntime-web" / "dist"
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".mjs": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
         ".json": "application/json", ".txt": "text/plain; charset=utf-8", ".md": "text/markdown; charset=utf-8",
         ".wasm": "application/wasm", ".onnx": "application/octet-stream"}


def add_arguments(parser):
    parser.add_argument("--model", required=True, help="an ONNX tagger export folder (kmssl export --format onnx)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000; 0: any free port)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this computer only)")
    parser.add_argument("--ort-dir", help=f"a folder with onnxruntime-web {ORT_WEB_VERSION}'s {', '.join(ORT_WEB_FILES)} "
                                          "(its npm package's dist/); default: a checkout's js/node_modules, else "
                                          "downloaded once into ~/.cache/keras_music_ssl/")


def _fail(message):
    print(f"kmssl serve-demo: error: {str(message).splitlines()[0]}", file=sys.stderr)
    return 2


# --- the model ------------------------------------------------------------------------------

def check_tagger_folder(path):
    """The metadata of ``path`` if it is an ONNX tagger export folder; else ``ValueError`` in one line."""
    from keras_music_ssl.export.metadata import ExportError, is_onnx_folder, read_metadata

    path = pathlib.Path(path)
    if not path.exists():
        raise ValueError(f"--model {path}: no such folder")
    if not path.is_dir() or not is_onnx_folder(path):
        raise ValueError(f"--model {path} is not an ONNX export folder (no clips.onnx): "
                         "export one with kmssl export --format onnx")
    try:
        meta = read_metadata(path)
    except ExportError as error:
        raise ValueError(f"--model {path}: {error}") from None
    if meta["kind"] != "tagger":
        raise ValueError(f"--model {path} is an ONNX {meta['kind']}, not a tagger: export an encoder with a "
                         "probe head (kmssl export --head ...) to tag music")
    if not (path / "track.onnx").is_file():
        raise ValueError(f"--model {path} has no track.onnx: not a complete ONNX export")
    return meta


# --- onnxruntime-web ------------------------------------------------------------------------

def has_ort_files(folder):
    return folder is not None and all((pathlib.Path(folder) / name).is_file() for name in ORT_WEB_FILES)


def _package_version(dist):
    try:
        return json.loads((pathlib.Path(dist).parent / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def default_cache_dir():
    return pathlib.Path(os.path.expanduser("~/.cache/keras_music_ssl")) / f"onnxruntime-web-{ORT_WEB_VERSION}"


def ort_web_dir(explicit=None, cache_dir=None, url=ORT_WEB_URL, integrity=ORT_WEB_INTEGRITY):
    """The folder that holds ``ORT_WEB_FILES`` (see the module docstring for where it comes from)."""
    if explicit is not None:
        if not has_ort_files(explicit):
            raise ValueError(f"--ort-dir {explicit} lacks onnxruntime-web's {', '.join(ORT_WEB_FILES)} "
                             "(give its npm package's dist/ folder)")
        version = _package_version(explicit)
        if version not in (None, ORT_WEB_VERSION):
            print(f"kmssl serve-demo: warning: --ort-dir holds onnxruntime-web {version}; the page is tested with "
                  f"{ORT_WEB_VERSION}", file=sys.stderr)
        return pathlib.Path(explicit)
    if has_ort_files(CHECKOUT_ORT_DIR) and _package_version(CHECKOUT_ORT_DIR) == ORT_WEB_VERSION:
        return CHECKOUT_ORT_DIR
    cache_dir = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if not has_ort_files(cache_dir):
        fetch_ort_web(cache_dir, url, integrity)
    return cache_dir


def npm_integrity(path):
    """``sha512-<base64>`` of a file, as npm writes a tarball's integrity."""
    digest = hashlib.sha512()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return "sha512-" + base64.b64encode(digest.digest()).decode()


def fetch_ort_web(target, url=ORT_WEB_URL, integrity=ORT_WEB_INTEGRITY):
    """Download onnxruntime-web's npm tarball (resumable), check its integrity, and unpack
    ``ORT_WEB_FILES`` from its ``package/dist/`` into ``target`` (whole, or not at all)."""
    from keras_music_ssl.download import DownloadError, download

    target = pathlib.Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tarball = target.parent / f"onnxruntime-web-{ORT_WEB_VERSION}.tgz"
    print(f"kmssl serve-demo: fetching onnxruntime-web {ORT_WEB_VERSION} (once) into {target}", file=sys.stderr)
    try:
        download(url, tarball, what=f"onnxruntime-web-{ORT_WEB_VERSION}.tgz")
    except DownloadError as error:
        raise DownloadError(f"{error}; without the internet, run `npm install onnxruntime-web@{ORT_WEB_VERSION}` "
                            "somewhere and pass --ort-dir node_modules/onnxruntime-web/dist") from None
    if npm_integrity(tarball) != integrity:
        tarball.unlink()
        raise DownloadError(f"{url}: the tarball's sha512 is not the pinned one; removed it (a damaged transfer "
                            "or mirror?)")
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        with tarfile.open(tarball, "r:gz") as archive:
            for name in ORT_WEB_FILES:
                try:
                    member = archive.getmember(f"package/dist/{name}")
                    source = archive.extractfile(member)
                except KeyError:
                    source = None
                if source is None:
                    raise DownloadError(f"{url} has no package/dist/{name}: not onnxruntime-web {ORT_WEB_VERSION}")
                with source, open(pathlib.Path(tmp) / name, "wb") as out:
                    shutil.copyfileobj(source, out)
        staged = pathlib.Path(tmp) / "dist"
        os.mkdir(staged)
        for name in ORT_WEB_FILES:
            os.replace(pathlib.Path(tmp) / name, staged / name)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staged, target)
    tarball.unlink()
    return target


# --- the server -----------------------------------------------------------------------------

class DemoHandler(http.server.SimpleHTTPRequestHandler):
    """GET/HEAD of the files of three folders (``roots``: URL prefix -> folder); no listings,
    no dot files, no path outside a folder."""

    roots = {}  # set by make_server's subclass
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, **TYPES}

    def translate_path(self, path):
        path = urllib.parse.unquote(urllib.parse.urlsplit(path).path)
        parts = [p for p in posixpath.normpath(path).split("/") if p]
        if any(p.startswith(".") or "\\" in p for p in parts):
            return ""  # dot files (and the ".." that normpath leaves at the top) are never served
        root = self.roots[""]
        if parts and parts[0] in self.roots:
            root, parts = self.roots[parts[0]], parts[1:]
        return os.path.join(root, *parts)

    def send_head(self):
        if not self.translate_path(self.path):
            self.send_error(404, "File not found")
            return None
        return super().send_head()  # a folder: redirect to its URL with a slash, then list_directory

    def list_directory(self, path):
        self.send_error(404, "No listing here")
        return None

    def end_headers(self):
        self.send_header("Cache-Control", "no-cache")
        self.send_header("X-Content-Type-Options", "nosniff")
        super().end_headers()

    def log_request(self, code="-", size="-"):
        if isinstance(code, int) and code >= 400 or str(code).startswith(("4", "5")):
            super().log_request(code, size)


class DemoServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    @property
    def url(self):
        host, port = self.server_address[:2]
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


def make_server(model_dir, ort_dir, host="127.0.0.1", port=8000, web_dir=WEB_DIR):
    """A ``DemoServer`` bound to ``host:port`` (not yet serving: call ``serve_forever``)."""
    handler = type("Handler", (DemoHandler,), {"roots": {"": str(web_dir), "model": str(model_dir),
                                                          "ort": str(ort_dir)}})
    server_class = DemoServer
    if ":" in host:
        import socket

        server_class = type("DemoServer6", (DemoServer,), {"address_family": socket.AF_INET6})
    return server_class((host, port), handler)


def run(args):
    if not 0 <= args.port <= 65535:
        return _fail(f"--port {args.port}: not a port number (0 to 65535)")
    try:
        meta = check_tagger_folder(args.model)
    except ValueError as error:
        return _fail(error)
    if not all((WEB_DIR / name).is_file() for name in WEB_FILES):
        return _fail(f"the page's files are missing from {WEB_DIR}: reinstall keras-music-ssl")
    try:
        ort_dir = ort_web_dir(args.ort_dir)
    except ValueError as error:
        return _fail(error)
    try:
        server = make_server(args.model, ort_dir, args.host, args.port)
    except OSError as error:
        return _fail(f"cannot listen on {args.host}:{args.port} ({error.strerror or error})")
    with server:
        print(f"Serving the browser tagger for {args.model} ({len(meta['tags'])} tags) at {server.url}", flush=True)
        print("Open that address in a browser; Ctrl-C stops the server.", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            print("kmssl serve-demo: stopped", file=sys.stderr)
    return 0
