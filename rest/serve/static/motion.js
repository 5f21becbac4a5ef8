// REST live face motion: stream speech over /ws/motion, draw the rig frames the server sends back on an SVG face.
// Protocol: rest/serve/app.py ("Motion"): JSON start/end up, float32 PCM at 16 kHz up, JSON "motion" messages down.
"use strict";

const $ = (id) => document.getElementById(id);
const SYNC_MARGIN_S = 0.1; // file mode: extra delay of the sound past the first frames, for network jitter
const PIECE_S = 0.04; // audio message length
const DEG = 180 / Math.PI;
// Display ranges of the rig parameters (rest/models/rig.py): a value outside is drawn at the edge, so that a model
// that overshoots (or the random test model) still draws a face.
const RANGES = {
  jaw_open: [0, 1], mouth_close: [0, 1], mouth_width: [-0.4, 0.3], smile: [-1, 1], brow_inner: [-1, 1],
  brow_outer: [-1, 1], brow_down: [0, 1], lid: [-1, 1], blink: [0, 1], gaze_x: [-1, 1], gaze_y: [-1, 1],
  head_yaw: [-0.5, 0.5], head_pitch: [-0.5, 0.5], head_roll: [-0.5, 0.5],
};

let info = null; // /api/info's "motion"
let ws = null;
let ctx = null;
let names = []; // the rig parameters' order in the frames (from "ready")
let chunkFrames = 2;
let frames = []; // index -> rig values
let received = 0;
let shown = -1;
let mode = null; // "file" or "mic"
let playStart = null; // file mode: AudioContext time at which the sound (and frame 0) starts
let startPlayback = () => {};
let gaze = null; // the eyes' target [x, y] in the rig's units (click the face), or null: the model's own gaze
let stopSending = () => {};
let stopPlayback = () => {};
let sendLog = []; // [samples sent so far, performance.now()] per audio message, for the latency
let samplesSent = 0;
let arrivals = []; // performance.now() of each received frame within the last second, for the frame rate

function status(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

async function init() {
  info = (await (await fetch("/api/info")).json()).motion;
  if (!info) {
    status("this server has no motion model (rest serve --motion FOLDER)", true);
    return;
  }
  for (const name of info.emotions) {
    const option = document.createElement("option");
    option.value = option.textContent = name;
    $("emotion").appendChild(option);
  }
  $("face").onclick = (event) => setGaze(gazeAt(event));
  $("gaze-free").onclick = () => setGaze(null);
  $("start-file").onclick = startFile;
  $("start-mic").onclick = startMic;
  $("stop").onclick = () => {
    stopPlayback();
    finish();
  };
  drawFace(null);
  requestAnimationFrame(draw);
  status("ready: stream an audio file or the microphone");
}

function openStream(onReady) {
  frames = [];
  received = 0;
  shown = -1;
  playStart = null;
  sendLog = [];
  samplesSent = 0;
  arrivals = [];
  $("frames").textContent = "0";
  $("latency").textContent = "-";
  $("fps").textContent = "-";
  if (ws && ws.readyState <= WebSocket.OPEN) ws.close(1000);
  const socket = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws/motion`);
  ws = socket;
  const emotion = $("emotion").value || null;
  ws.onopen = () => ws.send(JSON.stringify({ type: "start", emotion, seed: 0, gaze }));
  ws.onmessage = (event) => {
    if (socket !== ws) return; // a stream the user replaced
    const msg = JSON.parse(event.data);
    if (msg.type === "ready") {
      names = msg.names;
      chunkFrames = msg.chunk_frames;
      buildValues();
      onReady();
    } else if (msg.type === "motion") {
      receive(msg);
    } else if (msg.type === "done") {
      status(`done: ${msg.frames} frames`);
    } else if (msg.type === "error") {
      status("server: " + msg.message, true);
    }
  };
  ws.onclose = (event) => {
    if (socket !== ws) return;
    stopSending();
    if (event.code !== 1000) {
      if ($("status").className !== "error") status(`closed (${event.code})`, true);
      stopPlayback();
    } // after "done" a file's delayed sound plays to its end, and the face with it
    $("stop").disabled = true;
  };
  $("stop").disabled = false;
}

// A click on the face -> the gaze target it points at: x, y in -1 .. 1 from the eyes' centre (the irises' range).
function gazeAt(event) {
  const point = new DOMPoint(event.clientX, event.clientY).matrixTransform($("face").getScreenCTM().inverse());
  const clamp = (x) => Math.max(-1, Math.min(1, x));
  return [clamp(point.x / 60), clamp((point.y + 12) / 40)].map((x) => Math.round(x * 100) / 100);
}

function setGaze(target) {
  gaze = target;
  $("gaze").textContent = gaze ? `held at ${gaze[0].toFixed(2)}, ${gaze[1].toFixed(2)}` : "the model's";
  $("gaze-free").disabled = !gaze;
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "gaze", gaze }));
}

function receive(msg) {
  const now = performance.now();
  msg.frames.forEach((values, i) => (frames[msg.start + i] = values));
  received += msg.frames.length;
  $("frames").textContent = received;
  // latency: since the message that completed the audio these frames cover (the end pads the last chunk)
  const needed = Math.min(samplesSent, Math.round(((msg.start + msg.frames.length) * info.sample_rate) / info.fps));
  while (sendLog.length > 1 && sendLog[0][0] < needed) sendLog.shift(); // later frames need later audio
  if (sendLog.length) $("latency").textContent = Math.round(now - sendLog[0][1]);
  for (let i = 0; i < msg.frames.length; i++) arrivals.push(now);
  while (arrivals.length && arrivals[0] < now - 1000) arrivals.shift();
  $("fps").textContent = arrivals.length;
  if (mode === "file" && playStart === null) startPlayback();
}

function send(samples) {
  if (!ws || ws.readyState !== WebSocket.OPEN) return;
  ws.send(new Float32Array(samples).buffer);
  samplesSent += samples.length;
  sendLog.push([samplesSent, performance.now()]);
}

function finish() {
  stopSending();
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "end" }));
}

function newAudioContext() {
  // at the model's sample rate, so that the browser resamples both decoded files and the microphone to it
  stopSending();
  stopPlayback();
  if (ctx) ctx.close();
  ctx = new AudioContext({ sampleRate: info.sample_rate });
  stopPlayback = () => {};
}

async function startFile() {
  const file = $("audio-file").files[0];
  if (!file) {
    status("choose an audio file first", true);
    return;
  }
  newAudioContext();
  mode = "file";
  let buffer;
  try {
    buffer = await ctx.decodeAudioData(await file.arrayBuffer());
  } catch (err) {
    status("cannot decode this audio file in the browser", true);
    return;
  }
  const mono = monoOf(buffer);
  openStream(() => {
    status("streaming the file");
    const source = ctx.createBufferSource();
    source.buffer = buffer;
    source.connect(ctx.destination);
    startPlayback = () => {
      playStart = ctx.currentTime + chunkFrames / info.fps + SYNC_MARGIN_S;
      source.start(playStart);
    };
    stopSending = sendInRealTime(mono, info.sample_rate, PIECE_S, send, finish); // then "end"
    stopPlayback = () => {
      try { source.stop(); } catch (e) { /* not started */ }
    };
  });
}

async function startMic() {
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (err) {
    status("no microphone: " + err.message, true);
    return;
  }
  newAudioContext();
  mode = "mic";
  openStream(() => {
    status("streaming the microphone");
    stopSending = sendMicrophone(ctx, stream, send);
  });
}

function draw() {
  let index = -1;
  if (mode === "mic") {
    index = frames.length - 1; // live: the newest frame
  } else if (playStart !== null) {
    const due = Math.floor((ctx.currentTime - playStart) * info.fps); // file: the frame of the sound playing now
    index = Math.min(due, frames.length - 1);
  }
  if (index > shown && frames[index]) {
    const rig = {};
    names.forEach((name, i) => (rig[name] = frames[index][i]));
    drawFace(rig);
    showValues(frames[index]);
    shown = index;
  }
  requestAnimationFrame(draw);
}

// The face: rig values (null: the rest pose) -> SVG attributes. Units: the viewBox's, the face about 140 wide.
function drawFace(rig) {
  const v = (name) => {
    const [lo, hi] = RANGES[name];
    return rig && rig[name] !== undefined ? Math.min(hi, Math.max(lo, rig[name])) : 0;
  };
  const set = (id, attrs) => Object.entries(attrs).forEach(([k, value]) => $(id).setAttribute(k, value));
  const f = (x) => x.toFixed(2);
  // head: yaw turns the face to the image's right, pitch raises it, roll tilts it counter-clockwise; the features
  // move further than the outline, a cheap parallax that reads as a turn
  const yaw = v("head_yaw"), pitch = v("head_pitch"), roll = v("head_roll");
  set("head", { transform: `translate(${f(yaw * 30)} ${f(-pitch * 30)}) rotate(${f(-roll * DEG)})` });
  set("features", { transform: `translate(${f(yaw * 40)} ${f(-pitch * 35)})` });
  const chin = 92 + 12 * v("jaw_open");
  set("outline", {
    d: `M -70 -10 C -72 -118 72 -118 70 -10 C 70 ${f(chin - 40)} 35 ${f(chin)} 0 ${f(chin)} ` +
      `C -35 ${f(chin)} -70 ${f(chin - 40)} -70 -10 Z`,
  });
  // eyes: the aperture opens with lid > 0 and closes with blink; the irises follow the gaze inside the eye
  const ry = Math.max(0.6, 8 * (1 + 0.45 * v("lid")) * (1 - v("blink")));
  for (const [side, cx] of [["left", -28], ["right", 28]]) {
    set(`eye-${side}`, { ry: f(ry) });
    set(`clip-eye-${side}`, { ry: f(ry) });
    set(`iris-${side}`, { cx: f(cx + 8 * v("gaze_x")), cy: f(-12 + 5 * v("gaze_y")) });
    // brows: inner and outer ends raised separately; brow_down lowers them and draws them together
    const s = Math.sign(cx), down = v("brow_down");
    const ix = s * (10 - 4 * down), iy = -30 - 9 * v("brow_inner") + 7 * down;
    const ox = s * 45, oy = -30 - 9 * v("brow_outer") + 2 * down;
    set(`brow-${side}`, { d: `M ${f(ix)} ${f(iy)} Q ${f(s * 27)} ${f((iy + oy) / 2 - 6)} ${f(ox)} ${f(oy)}` });
  }
  // mouth: jaw_open parts the lips (mouth_close presses them), mouth_width spreads or rounds them, smile lifts the
  // corners. A quadratic's middle is halfway between its ends and its control point: control = 2 * middle - end.
  const y = 50, w = 22 * (1 + 1.2 * v("mouth_width")), corner = y - 8 * v("smile");
  const open = 26 * v("jaw_open") * (1 - v("mouth_close"));
  const upper = y - 2 - 0.15 * open, lower = y + 2 + open;
  set("mouth", {
    d: `M ${f(-w)} ${f(corner)} Q 0 ${f(2 * upper - corner)} ${f(w)} ${f(corner)} ` +
      `Q 0 ${f(2 * lower - corner)} ${f(-w)} ${f(corner)} Z`,
  });
}

function buildValues() {
  const table = $("values");
  table.innerHTML = "";
  for (const name of names) {
    const row = table.insertRow();
    row.insertCell().textContent = name;
    row.insertCell().innerHTML = '<span class="bar"><span class="fill"></span></span>';
    row.insertCell().className = "value";
  }
}

function showValues(values) {
  const rows = $("values").rows;
  values.forEach((value, i) => {
    const [lo, hi] = RANGES[names[i]] || [-1, 1];
    const span = Math.max(Math.abs(lo), Math.abs(hi)); // a bar from the middle: left for < 0, right for > 0
    const part = Math.min(1, Math.abs(value) / span) * 50;
    const fill = rows[i].cells[1].firstChild.firstChild;
    fill.style.left = (value < 0 ? 50 - part : 50) + "%";
    fill.style.width = part + "%";
    rows[i].cells[2].textContent = value.toFixed(2);
  });
}

init();
