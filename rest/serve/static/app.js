// REST live demo: pick a portrait, stream speech over a WebSocket, draw the frames the server sends back.
// Protocol: README "rest serve" (text JSON control messages, binary float32 PCM at 16 kHz up, JPEG frames down).
"use strict";

const $ = (id) => document.getElementById(id);
// File mode keeps sound and picture in sync by delaying the sound: playback starts when frame 0 arrives plus one
// chunk (the first frame of each later chunk waits for that chunk's audio) plus a margin for jitter, and each frame
// is drawn when the audio clock reaches its time. With the microphone the newest frame is drawn on arrival.
const SYNC_MARGIN_S = 0.1;
const PIECE_S = 0.04; // audio message length

let info = null;
let portraitId = null;
let ws = null;
let ctx = null;
let frames = new Map(); // index -> ImageBitmap
let shown = -1;
let received = 0;
let mode = null; // "file" or "mic"
let chunkFrames = 4; // frames per generated chunk (from the server's "ready")
let playStart = null; // file mode: AudioContext time at which the sound (and frame 0) starts
let startPlayback = () => {}; // file mode: schedules the sound once frame 0 has arrived
let firstSend = null;
let stopSending = () => {}; // stops the file timer or the microphone
let stopPlayback = () => {}; // stops the delayed sound of a file

function status(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

async function init() {
  info = await (await fetch("/api/info")).json();
  const list = await (await fetch("/api/portraits")).json();
  for (const name of list.bundled) {
    const option = document.createElement("option");
    option.value = name;
    option.textContent = name;
    $("bundled").appendChild(option);
  }
  $("bundled").onchange = () => {
    const name = $("bundled").value;
    if (!name) return;
    portraitId = "bundled:" + name;
    $("portrait-preview").src = "/api/portraits/" + encodeURIComponent(name);
    $("portrait-preview").hidden = false;
    $("portrait-status").textContent = "bundled portrait " + name;
    ready();
  };
  $("portrait-file").onchange = upload;
  $("start-file").onclick = startFile;
  $("start-mic").onclick = startMic;
  $("stop").onclick = () => {
    stopPlayback();
    finish();
  };
  requestAnimationFrame(draw);
  status("pick a portrait");
}

function ready() {
  $("start-file").disabled = !portraitId;
  $("start-mic").disabled = !portraitId;
  status(portraitId ? "ready: stream an audio file or the microphone" : "pick a portrait");
}

async function upload() {
  const file = $("portrait-file").files[0];
  if (!file) return;
  $("portrait-status").textContent = "uploading...";
  const response = await fetch("/api/portraits", { method: "POST", body: file });
  const body = await response.json();
  if (!response.ok) {
    portraitId = null;
    $("portrait-status").textContent = body.error;
    $("portrait-status").className = "error";
    ready();
    return;
  }
  portraitId = body.id;
  $("portrait-preview").src = URL.createObjectURL(file);
  $("portrait-preview").hidden = false;
  $("portrait-status").className = "";
  $("portrait-status").textContent = `uploaded (${body.width}x${body.height}), face found`;
  ready();
}

function openStream(onReady) {
  frames = new Map();
  shown = -1;
  received = 0;
  firstSend = null;
  playStart = null;
  $("latency").textContent = "-";
  $("rtf").textContent = "-";
  $("delay").textContent = "-";
  $("frames").textContent = "0";
  $("dropped").textContent = "0";
  if (ws && ws.readyState <= WebSocket.OPEN) ws.close(1000);
  const socket = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
  ws = socket;
  ws.binaryType = "arraybuffer";
  ws.onopen = () => ws.send(JSON.stringify({ type: "start", portrait: portraitId, seed: 0 }));
  ws.onmessage = async (event) => {
    if (socket !== ws) return; // a stream the user replaced
    if (typeof event.data === "string") {
      const msg = JSON.parse(event.data);
      if (msg.type === "ready") {
        chunkFrames = msg.chunk_frames;
        onReady();
      }
      else if (msg.type === "stats" || msg.type === "done") showStats(msg);
      else if (msg.type === "error") status("server: " + msg.message, true);
      if (msg.type === "done") status("done");
      return;
    }
    const index = new DataView(event.data).getUint32(0, true);
    if (firstSend !== null && $("latency").textContent === "-") {
      $("latency").textContent = Math.round(performance.now() - firstSend);
    }
    if (mode === "file" && playStart === null) startPlayback();
    const bitmap = await createImageBitmap(new Blob([event.data.slice(4)], { type: "image/jpeg" }));
    frames.set(index, bitmap);
    received += 1;
    $("frames").textContent = received;
  };
  ws.onclose = (event) => {
    if (socket !== ws) return;
    stopSending();
    if (event.code !== 1000) {
      if ($("status").className !== "error") status(`closed (${event.code})`, true);
      stopPlayback();
    } // after "done" the delayed sound plays to its end, and the frames with it
    $("stop").disabled = true;
  };
  $("stop").disabled = false;
}

function showStats(msg) {
  if (msg.rtf != null) $("rtf").textContent = msg.rtf.toFixed(2);
  if (msg.first_frame_latency_s != null && $("latency").textContent === "-") {
    $("latency").textContent = Math.round(msg.first_frame_latency_s * 1000);
  }
  $("dropped").textContent = msg.dropped || 0;
}

function send(samples) {
  if (!ws || ws.readyState !== WebSocket.OPEN) return;
  if (firstSend === null) firstSend = performance.now();
  ws.send(new Float32Array(samples).buffer);
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
    const sendStart = ctx.currentTime;
    startPlayback = () => {
      playStart = ctx.currentTime + chunkFrames / info.fps + SYNC_MARGIN_S;
      source.start(playStart);
      $("delay").textContent = Math.round((playStart - sendStart) * 1000);
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
    index = frames.size ? Math.max(...frames.keys()) : -1; // live: the newest frame
  } else if (playStart !== null) {
    const due = Math.floor((ctx.currentTime - playStart) * info.fps); // file: the frame of the sound playing now
    for (let i = due; i > shown && i >= 0; i--) {
      if (frames.has(i)) { index = i; break; }
    }
  }
  if (index > shown && frames.has(index)) {
    const canvas = $("video");
    canvas.getContext("2d").drawImage(frames.get(index), 0, 0, canvas.width, canvas.height);
    for (const key of frames.keys()) if (key < index - 50) frames.delete(key); // keep memory bounded
    shown = index;
  }
  requestAnimationFrame(draw);
}

init();
