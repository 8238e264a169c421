/* echo-os GLB viewer: a minimal WebGL viewer for the gallery's lightbox, written for echo-os (no library,
   no network). It reads a binary glTF 2.0 file (GLB: the JSON chunk and the BIN chunk), takes every
   triangle primitive of the default scene with its node transforms, the POSITION attribute, the indices
   and COLOR_0 when present, and draws the mesh flat-shaded (a normal per face, lit from the upper right,
   both sides), centred and scaled to fit, turning about its up (y) axis; a drag turns it by hand.

   The gallery is a static page opened from disk, where a script may not fetch() a file:// URL; so the
   gallery writes each GLB beside its thumbnails as a small script, `echoGlb["<id>"] = "<base64>"`, and
   GlbViewer.load(id, src) adds that script to the page.

     const viewer = await GlbViewer.show(canvas, bytes);   // bytes: a Uint8Array of the GLB
     viewer.stop();

   On the canvas: data-drawn="1" once a frame is drawn, data-triangles, data-renderer ("webgl"), or
   data-error with the reason the file could not be shown. */
"use strict";
const GlbViewer = (() => {
  const COMPONENTS = {SCALAR: 1, VEC2: 2, VEC3: 3, VEC4: 4, MAT4: 16};
  const READERS = {  // componentType -> [bytes, DataView getter, normalising divisor]
    5120: [1, "getInt8", 127], 5121: [1, "getUint8", 255], 5122: [2, "getInt16", 32767],
    5123: [2, "getUint16", 65535], 5125: [4, "getUint32", 1], 5126: [4, "getFloat32", 1]};

  function decodeBase64(text) {
    const raw = atob(text), bytes = new Uint8Array(raw.length);
    for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
    return bytes;
  }

  function load(id, src) {  // the GLB bytes from the gallery's script file for artifact `id`
    window.echoGlb = window.echoGlb || {};
    if (window.echoGlb[id]) return Promise.resolve(decodeBase64(window.echoGlb[id]));
    return new Promise((resolve, reject) => {
      const script = document.createElement("script");
      script.src = src;
      script.onload = () => window.echoGlb[id] ? resolve(decodeBase64(window.echoGlb[id]))
                                               : reject(new Error("the GLB script holds no mesh " + id));
      script.onerror = () => reject(new Error("could not read " + src));
      document.head.appendChild(script);
    });
  }

  function parse(bytes) {
    const data = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    if (bytes.byteLength < 20 || data.getUint32(0, true) !== 0x46546C67) throw new Error("not a GLB file");
    if (data.getUint32(4, true) !== 2) throw new Error("GLB version " + data.getUint32(4, true) + ", not 2");
    let offset = 12, json = null, bin = null;
    while (offset + 8 <= bytes.byteLength) {
      const length = data.getUint32(offset, true), type = data.getUint32(offset + 4, true);
      const chunk = bytes.subarray(offset + 8, offset + 8 + length);
      if (type === 0x4E4F534A) json = JSON.parse(new TextDecoder().decode(chunk));
      else if (type === 0x004E4942) bin = chunk;
      offset += 8 + length;
    }
    if (!json) throw new Error("the GLB has no JSON chunk");
    const binData = bin ? new DataView(bin.buffer, bin.byteOffset, bin.byteLength) : null;

    function accessor(index) {  // [values as a flat Float64Array, components per element]
      const acc = json.accessors[index], view = json.bufferViews[acc.bufferView];
      const width = COMPONENTS[acc.type], [size, getter, divisor] = READERS[acc.componentType];
      const stride = view.byteStride || width * size, start = (view.byteOffset || 0) + (acc.byteOffset || 0);
      const out = new Float64Array(acc.count * width);
      for (let i = 0; i < acc.count; i++)
        for (let k = 0; k < width; k++) {
          const value = binData[getter](start + i * stride + k * size, true);
          out[i * width + k] = acc.normalized || (divisor !== 1 && acc.type !== "SCALAR") ? value / divisor : value;
        }
      return [out, width];
    }

    function local(node) {  // the node's 4x4 transform, column-major
      if (node.matrix) return node.matrix.slice();
      const [x, y, z, w] = node.rotation || [0, 0, 0, 1], [sx, sy, sz] = node.scale || [1, 1, 1];
      const t = node.translation || [0, 0, 0];
      return [(1 - 2 * (y * y + z * z)) * sx, 2 * (x * y + z * w) * sx, 2 * (x * z - y * w) * sx, 0,
              2 * (x * y - z * w) * sy, (1 - 2 * (x * x + z * z)) * sy, 2 * (y * z + x * w) * sy, 0,
              2 * (x * z + y * w) * sz, 2 * (y * z - x * w) * sz, (1 - 2 * (x * x + y * y)) * sz, 0,
              t[0], t[1], t[2], 1];
    }
    function multiply(a, b) {
      const out = new Array(16).fill(0);
      for (let c = 0; c < 4; c++) for (let r = 0; r < 4; r++)
        for (let k = 0; k < 4; k++) out[c * 4 + r] += a[k * 4 + r] * b[c * 4 + k];
      return out;
    }

    const positions = [], colors = [];
    let coloured = false;
    function addMesh(mesh, matrix) {
      for (const primitive of mesh.primitives) {
        if (primitive.mode !== undefined && primitive.mode !== 4) continue;  // triangles only
        if (primitive.attributes.POSITION === undefined) continue;
        const [points] = accessor(primitive.attributes.POSITION);
        const count = points.length / 3;
        const [colour, colourWidth] = primitive.attributes.COLOR_0 !== undefined
          ? accessor(primitive.attributes.COLOR_0) : [null, 0];
        coloured = coloured || !!colour;
        const indices = primitive.indices !== undefined ? accessor(primitive.indices)[0]
                                                        : Float64Array.from({length: count}, (_, i) => i);
        for (const index of indices) {
          const x = points[index * 3], y = points[index * 3 + 1], z = points[index * 3 + 2];
          positions.push(matrix[0] * x + matrix[4] * y + matrix[8] * z + matrix[12],
                         matrix[1] * x + matrix[5] * y + matrix[9] * z + matrix[13],
                         matrix[2] * x + matrix[6] * y + matrix[10] * z + matrix[14]);
          if (colour) colors.push(colour[index * colourWidth], colour[index * colourWidth + 1],
                                  colour[index * colourWidth + 2]);
          else colors.push(0.75, 0.76, 0.8);
        }
      }
    }
    function visit(index, parent) {
      const node = json.nodes[index], matrix = multiply(parent, local(node));
      if (node.mesh !== undefined) addMesh(json.meshes[node.mesh], matrix);
      for (const child of node.children || []) visit(child, matrix);
    }
    const identity = [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1];
    const scene = (json.scenes || [])[json.scene || 0];
    if (scene) for (const index of scene.nodes || []) visit(index, identity);
    else for (const mesh of json.meshes || []) addMesh(mesh, identity);
    if (!positions.length) throw new Error("the GLB holds no triangles");

    // centre on the bounding box, scale into the unit sphere, a flat normal per face
    const low = [Infinity, Infinity, Infinity], high = [-Infinity, -Infinity, -Infinity];
    for (let i = 0; i < positions.length; i++) {
      low[i % 3] = Math.min(low[i % 3], positions[i]);
      high[i % 3] = Math.max(high[i % 3], positions[i]);
    }
    const centre = low.map((v, k) => (v + high[k]) / 2);
    let radius = 1e-9;
    for (let i = 0; i < positions.length; i += 3)
      radius = Math.max(radius, Math.hypot(positions[i] - centre[0], positions[i + 1] - centre[1],
                                           positions[i + 2] - centre[2]));
    const position = new Float32Array(positions.length), normal = new Float32Array(positions.length);
    for (let i = 0; i < positions.length; i++) position[i] = (positions[i] - centre[i % 3]) / radius;
    for (let i = 0; i < position.length; i += 9) {
      const u = [0, 1, 2].map(k => position[i + 3 + k] - position[i + k]);
      const v = [0, 1, 2].map(k => position[i + 6 + k] - position[i + k]);
      const n = [u[1] * v[2] - u[2] * v[1], u[2] * v[0] - u[0] * v[2], u[0] * v[1] - u[1] * v[0]];
      const length = Math.hypot(...n) || 1;
      for (let corner = 0; corner < 3; corner++)
        for (let k = 0; k < 3; k++) normal[i + corner * 3 + k] = n[k] / length;
    }
    return {position, normal, color: new Float32Array(colors), triangles: position.length / 9, coloured};
  }

  const VERTEX = `
    attribute vec3 position; attribute vec3 normal; attribute vec3 color;
    uniform mat3 turn; uniform vec2 fit; varying vec3 shadeNormal; varying vec3 shadeColor;
    void main() {
      vec3 p = turn * position;
      gl_Position = vec4(p.x * fit.x, p.y * fit.y, -p.z * 0.5, 1.0);
      shadeNormal = turn * normal; shadeColor = color;
    }`;
  const FRAGMENT = `
    precision mediump float; varying vec3 shadeNormal; varying vec3 shadeColor;
    void main() {
      float light = abs(dot(normalize(shadeNormal), normalize(vec3(0.4, 0.6, 0.7))));
      gl_FragColor = vec4(shadeColor * (0.3 + 0.7 * light), 1.0);
    }`;

  function compile(gl, type, source) {
    const shader = gl.createShader(type);
    gl.shaderSource(shader, source);
    gl.compileShader(shader);
    if (!gl.getShaderParameter(shader, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(shader));
    return shader;
  }

  function show(canvas, bytes) {
    const mesh = parse(bytes);
    const gl = canvas.getContext("webgl", {antialias: true, preserveDrawingBuffer: true});
    if (!gl) throw new Error("this browser has no WebGL: download the GLB to view it");
    const program = gl.createProgram();
    gl.attachShader(program, compile(gl, gl.VERTEX_SHADER, VERTEX));
    gl.attachShader(program, compile(gl, gl.FRAGMENT_SHADER, FRAGMENT));
    gl.linkProgram(program);
    if (!gl.getProgramParameter(program, gl.LINK_STATUS)) throw new Error(gl.getProgramInfoLog(program));
    gl.useProgram(program);
    for (const name of ["position", "normal", "color"]) {
      const buffer = gl.createBuffer(), location = gl.getAttribLocation(program, name);
      gl.bindBuffer(gl.ARRAY_BUFFER, buffer);
      gl.bufferData(gl.ARRAY_BUFFER, mesh[name], gl.STATIC_DRAW);
      gl.enableVertexAttribArray(location);
      gl.vertexAttribPointer(location, 3, gl.FLOAT, false, 0, 0);
    }
    const turn = gl.getUniformLocation(program, "turn"), fit = gl.getUniformLocation(program, "fit");
    gl.enable(gl.DEPTH_TEST);
    gl.clearColor(235 / 255, 235 / 255, 240 / 255, 1);
    let yaw = 0, dragged = 0, last = null, frame = 0, running = true, dragging = null;
    const tilt = 20 * Math.PI / 180;
    function draw(now) {
      if (!running) return;
      if (last !== null && dragging === null) yaw += (now - last) / 1000 * 0.8;  // radians a second
      last = now;
      const a = yaw + dragged, c = Math.cos(a), s = Math.sin(a), ct = Math.cos(tilt), st = Math.sin(tilt);
      // pitch (about x) after yaw (about y), column-major
      gl.uniformMatrix3fv(turn, false, [c, st * s, -ct * s, 0, ct, st, s, -st * c, ct * c]);
      const width = canvas.width, height = canvas.height, side = Math.min(width, height);
      gl.uniform2f(fit, 0.9 * side / width, 0.9 * side / height);
      gl.viewport(0, 0, width, height);
      gl.clear(gl.COLOR_BUFFER_BIT | gl.DEPTH_BUFFER_BIT);
      gl.drawArrays(gl.TRIANGLES, 0, mesh.triangles * 3);
      canvas.dataset.drawn = "1";
      frame = requestAnimationFrame(draw);
    }
    canvas.onpointerdown = (e) => { dragging = e.clientX - dragged * 200; canvas.setPointerCapture(e.pointerId); };
    canvas.onpointermove = (e) => { if (dragging !== null) dragged = (e.clientX - dragging) / 200; };
    canvas.onpointerup = () => { dragging = null; };
    canvas.dataset.renderer = "webgl";
    canvas.dataset.triangles = String(mesh.triangles);
    delete canvas.dataset.error;
    frame = requestAnimationFrame(draw);
    return {triangles: mesh.triangles, stop() { running = false; cancelAnimationFrame(frame); }};
  }

  return {load, parse, show, decodeBase64};
})();
