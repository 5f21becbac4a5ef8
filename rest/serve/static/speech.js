// Speech capture shared by the live pages (index.html, motion.html): a decoded file mixed to mono and sent in real
// time as a microphone would send it, and the microphone itself. Each returns the function that stops the sending.

// An AudioBuffer -> its channels' mean, a Float32Array at the buffer's sample rate.
function monoOf(buffer) {
  const mono = new Float32Array(buffer.length);
  for (let c = 0; c < buffer.numberOfChannels; c++) {
    const data = buffer.getChannelData(c);
    for (let i = 0; i < data.length; i++) mono[i] += data[i] / buffer.numberOfChannels;
  }
  return mono;
}

// Send `mono` (at `sampleRate`) through send(samples) in pieces of `pieceS` seconds, as fast as real time reaches them
// (catching up after a slow tick), then call finish().
function sendInRealTime(mono, sampleRate, pieceS, send, finish) {
  const t0 = performance.now();
  const piece = Math.round(pieceS * sampleRate);
  let sent = 0;
  const timer = setInterval(() => {
    const due = Math.min(mono.length, Math.round(((performance.now() - t0) / 1000) * sampleRate));
    while (sent < due) {
      send(mono.subarray(sent, Math.min(due, sent + piece)));
      sent = Math.min(due, sent + piece);
    }
    if (sent >= mono.length) {
      clearInterval(timer);
      finish();
    }
  }, pieceS * 1000);
  return () => clearInterval(timer);
}

// Send the microphone's `stream` through send(samples) from the AudioContext `ctx` (at the model's sample rate).
function sendMicrophone(ctx, stream, send) {
  const source = ctx.createMediaStreamSource(stream);
  const processor = ctx.createScriptProcessor(1024, 1, 1);
  processor.onaudioprocess = (event) => send(event.inputBuffer.getChannelData(0));
  source.connect(processor);
  processor.connect(ctx.destination);
  return () => {
    processor.disconnect();
    source.disconnect();
    stream.getTracks().forEach((t) => t.stop());
  };
}
