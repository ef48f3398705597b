"The service's web page in headless Chromium: a key, enrol, identify and the gallery's identities, through the page as a person uses it."
import json, struct, threading, time
from pathlib import Path
import numpy as np, pytest
from chromium import Chromium, executable
from image_folders import colour_folder

root = Path(__file__).resolve().parents[1]
NAME = 'Ann "the \\"Quote\\"" O\'Brien \\ <b>x</b> or label != "'  # quotes, backslashes, markup and Milvus filter syntax

def tiny_model(path, size=32):
    "A torch-free ONNX embedder: the means of 4×4 pixel blocks as a unit vector, with the metadata `export_onnx` writes"
    import onnx
    from onnx import TensorProto, helper
    from cosine_losses.recognition.embedder import ONNX_FORMAT, graph_hash
    nodes = [helper.make_node('AveragePool', ['x'], ['p'], kernel_shape=[4, 4], strides=[4, 4]), helper.make_node('Flatten', ['p'], ['f']),
             helper.make_node('LpNormalization', ['f'], ['emb'], axis=1, p=2)]
    g = helper.make_graph(nodes, 'tiny', [helper.make_tensor_value_info('x', TensorProto.FLOAT, ['N', 3, size, size])],
                          [helper.make_tensor_value_info('emb', TensorProto.FLOAT, ['N', 3*(size//4)**2])])
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid('', 17)], ir_version=8)
    spec = dict(mode='RGB', input_size=[size, size], resize='squish', size=[size, size], pad_mode='zeros', resample=2, div=255.,
                mean=[.12]*3, std=[.25]*3)
    for k,v in dict(format=ONNX_FORMAT, preprocessing=json.dumps(spec), fingerprint='tiny:avgpool4', graph=graph_hash(proto)).items():
        proto.metadata_props.add(key=f'cosine_losses.{k}', value=v)
    onnx.save(proto, path)
    return path

def serve(app):
    "`app` on uvicorn at 127.0.0.1, in a thread: (its URL, the server)"
    import uvicorn
    srv = uvicorn.Server(uvicorn.Config(app, host='127.0.0.1', port=0, log_level='warning'))
    threading.Thread(target=srv.run, daemon=True).start()
    t0 = time.time()
    while not srv.started:
        if time.time() - t0 > 30: raise RuntimeError('uvicorn did not start')
        time.sleep(.02)
    return f'http://127.0.0.1:{srv.servers[0].sockets[0].getsockname()[1]}/',srv

@pytest.fixture(scope='module')
def world(tmp_path_factory):
    "The service with keys (a read key, a write key) over a zip gallery, a service without keys, the images, and the browser"
    exe = executable()
    from cosine_losses.recognition.keys import KeyStore
    from cosine_losses.recognition.service import make_app
    d = tmp_path_factory.mktemp('page')
    model = tiny_model(d/'tiny.onnx')
    imgs = colour_folder(d/'images', ['apple', 'banana', 'fig'], 5, 0)
    keys = KeyStore(d/'keys.json')
    read,write = keys.add('the page, reading', 'read'),keys.add('the page, writing', 'write')
    (url,srv),(open_url,open_srv) = serve(make_app(model, d/'gallery.zip', keys=keys)),serve(make_app(model, d/'open.zip'))
    b = Chromium(exe, d/'chromium', size=(1280, 800))
    # the viewport itself, not the window around it
    b.send('Emulation.setDeviceMetricsOverride', width=1280, height=800, deviceScaleFactor=1, mobile=False)
    yield dict(url=url, open_url=open_url, model=model, imgs=imgs, d=d, b=b, read=read, write=write)
    b.close()
    srv.should_exit = open_srv.should_exit = True

def load(b, url):
    b.goto(url)
    b.js("window.ready.then(() => true)")

def use_key(b, key):
    b.js("document.getElementById('key').focus()")
    b.send('Input.insertText', text=key)
    b.js("document.querySelector('#key-form button[type=submit]').click()")

def rows(b):
    "The identities table as [(identity, images)]"
    js = "[...document.querySelectorAll('#identities tbody tr')].map(r => [r.dataset.identity, +r.cells[1].textContent])"
    return [tuple(r) for r in b.js(js)]

def submit(b, form, done):
    "Press `form`'s submit button, wait for its message to settle (`done`: a JS condition), and return the message"
    b.js(f"document.getElementById('{form}-msg').textContent = ''")
    b.js(f"document.getElementById('{form}-submit').click()")
    return b.wait(f"(() => {{ const m = document.getElementById('{form}-msg'); return ({done}) && m.textContent }})()")

def enrol(b, name, files):
    b.js("document.getElementById('enrol-identity').value = ''; document.getElementById('enrol-identity').focus()")
    b.send('Input.insertText', text=name)  # typed, as a person types it
    b.set_files('#enrol-files', files)
    return submit(b, 'enrol', "!document.getElementById('enrol-submit').disabled && !m.textContent.startsWith('Enrolling')")

def identify(b, file, threshold):
    b.js(f"document.getElementById('identify-threshold').value = '{threshold}'")
    b.set_files('#identify-files', [file])
    b.js("document.getElementById('identify-submit').click()")
    b.wait("document.querySelectorAll('#identify-results > li').length === 1 "
           "|| document.getElementById('identify-msg').className.includes('error')")
    return b.js("""[...document.querySelectorAll('#identify-results > li')].map(li => ({identity: li.dataset.identity, unknown: li.dataset.unknown,
        answer: li.querySelector('.answer').firstChild.textContent, score: li.querySelector('.answer .score').textContent,
        top: [...li.querySelectorAll('.top-identity')].map(e => e.textContent)}))""")[0]

def png_size(path):
    "(width, height) of a PNG, from its header"
    head = Path(path).read_bytes()[:24]
    assert head[:8] == b'\x89PNG\r\n\x1a\n'
    return struct.unpack('>II', head[16:24])

def test_page_enrols_identifies_and_lists(world, tmp_path):
    from cosine_losses.recognition.embedder import OnnxEmbedder
    from cosine_losses.recognition.gallery import Gallery
    b,imgs = world['b'],world['imgs']
    load(b, world['url'])
    assert b.js("document.title").startswith('Recognition service')
    assert 'needs a key' in b.js("document.getElementById('auth-note').textContent")
    assert b.js("document.getElementById('info-model').textContent").startswith('tiny.onnx (d = 192, tiny:avgpool4)')
    # without a key the API refuses, and the page shows the API's reason
    assert b.js("document.getElementById('identities-msg').textContent").startswith('401: ')
    # a read key lists but may not enrol: the 403's detail is on the page, nothing is enrolled
    use_key(b, world['read'])
    b.wait("document.getElementById('identities-msg').textContent.includes('empty')")
    assert b.js("sessionStorage.getItem('cosine-losses-api-key')") == world['read'] and b.js("document.getElementById('key').value") == ''
    msg = enrol(b, NAME, sorted((imgs/'apple').glob('*.png'))[:3])
    assert msg.startswith('403: ') and b.js("document.getElementById('enrol-msg').className") == 'msg error', msg
    assert not (world['d']/'gallery.zip').exists(), 'a refused enrol writes nothing'
    # a write key enrols: three images under a name full of quotes, two under another
    use_key(b, world['write'])
    assert enrol(b, NAME, sorted((imgs/'apple').glob('*.png'))[:3]) == f'Enrolled 3 images under “{NAME}”.'
    assert enrol(b, 'banana', sorted((imgs/'banana').glob('*.png'))[:2]) == 'Enrolled 2 images under “banana”.'
    assert rows(b) == sorted([(NAME, 3), ('banana', 2)])
    assert b.js("document.getElementById('info-gallery').textContent") == 'zip, 5 images of 2 identities'

    # identify another apple: the name, its score the best cosine with the enrolled images (computed here, independently)
    emb = OnnxEmbedder(world['model'])
    probe,stranger = sorted((imgs/'apple').glob('*.png'))[4],sorted((imgs/'fig').glob('*.png'))[0]
    enrolled = emb(sorted((imgs/'apple').glob('*.png'))[:3] + sorted((imgs/'banana').glob('*.png'))[:2])
    s = enrolled @ emb(probe)[0]
    r = identify(b, probe, .5)
    assert r['unknown'] == 'false' and r['identity'] == NAME and r['answer'] == NAME, r
    assert r['score'] == f'score {s[:3].max():.3f}' and s[:3].max() > .9 > .1 > s[3:].max()
    assert r['top'] == [NAME, 'banana']
    assert b.js("document.getElementById('threshold-used').textContent").startswith('Threshold used: 0.500')
    # a stranger is unknown, though the gallery's best identity is still listed with its score
    r = identify(b, stranger, .5)
    assert r['unknown'] == 'true' and r['answer'] == 'unknown' and r['identity'] == '', r
    assert r['score'] == f'score {(enrolled @ emb(stranger)[0]).max():.3f}'

    # both at once: one answer each, in the order sent
    b.set_files('#identify-files', [probe, stranger])
    b.js("document.getElementById('identify-submit').click()")
    b.wait("document.querySelectorAll('#identify-results > li').length === 2")
    assert b.js("[...document.querySelectorAll('#identify-results .answer')].map(e => e.firstChild.textContent)") == [NAME, 'unknown']
    assert b.js("[...document.querySelectorAll('#identify-results .file')].map(e => e.textContent)") == [probe.name, stranger.name]
    shot = tmp_path/'page.png'
    b.screenshot(shot)
    assert png_size(shot) == (1280, 800)
    b.screenshot(root/'_screenshots'/'page.png')  # for a person to look at; ignored by git

    # delete one identity from the page (Delete, then Confirm): only that one goes
    b.js("document.querySelector('#identities tbody tr[data-identity=\"banana\"] button').click()")
    assert b.js("document.querySelector('#identities tbody tr[data-identity=\"banana\"] button').textContent") == 'Confirm'
    b.js("document.querySelector('#identities tbody tr[data-identity=\"banana\"] button').click()")
    b.wait("document.getElementById('identities-msg').textContent.startsWith('Deleted')")
    assert b.js("document.getElementById('identities-msg').textContent") == 'Deleted “banana”: 2 images removed.'
    assert rows(b) == [(NAME, 3)]
    assert Gallery.load(world['d']/'gallery.zip').counts() == {NAME: 3}, 'what the page shows is what the service saved'
    # the page used nothing but the service's API on its own origin
    used = b.js("performance.getEntriesByType('resource').map(r => [new URL(r.name).origin === location.origin, new URL(r.name).pathname])")
    assert all(o for o,_ in used) and {p for _,p in used} <= {'/health', '/identities', '/enrol', '/identify'}, used

def test_page_says_when_there_are_no_keys(world):
    b = world['b']
    load(b, world['open_url'])
    assert b.js("document.getElementById('auth-note').textContent").startswith('This service runs without keys')
    assert b.js("document.getElementById('key').disabled")
    assert b.js("document.getElementById('identities-msg').textContent") == 'The gallery is empty: enrol a few images.'
    # a bad upload: the API's reason, and nothing enrolled
    bad = world['d']/'notes.png'
    bad.write_text('not an image')
    msg = enrol(b, 'someone', [bad])
    assert msg.startswith('4') and 'notes.png' in msg and b.js("document.getElementById('enrol-msg').className") == 'msg error', msg
    assert rows(b) == []
