// The microphone in, 8 kHz mu-law out: an AudioWorkletProcessor (runs on the audio thread).
//
// The browser hands 128-sample blocks of float samples at the context's rate (44.1 or 48 kHz). They
// are low-passed below 4 kHz (a windowed-sinc FIR, so nothing folds back when decimating), resampled
// to 8 kHz by linear interpolation, encoded G.711 mu-law and posted to the page in 20 ms frames
// (160 bytes) with the frame's RMS level for the meter. Encoding here means the server passes the
// bytes to the recognizer exactly as it does Twilio's: no transcoding on the server.

const OUT_RATE = 8000;
const FRAME = 160; // 20 ms at 8 kHz
const TAPS = 63;
const CUTOFF = 3600; // Hz, under the 4 kHz Nyquist frequency of the output

function lowpass(rate) {
  const fc = Math.min(CUTOFF, rate * 0.45) / rate;
  const mid = (TAPS - 1) / 2;
  const h = new Float32Array(TAPS);
  let sum = 0;
  for (let i = 0; i < TAPS; i++) {
    const x = i - mid;
    const sinc = x === 0 ? 2 * fc : Math.sin(2 * Math.PI * fc * x) / (Math.PI * x);
    const hamming = 0.54 - 0.46 * Math.cos((2 * Math.PI * i) / (TAPS - 1));
    h[i] = sinc * hamming;
    sum += h[i];
  }
  for (let i = 0; i < TAPS; i++) h[i] /= sum;
  return h;
}

// G.711 mu-law of one sample in [-1, 1] (ITU-T G.711: bias 132, clip 32635).
export function mulaw(sample) {
  let s = Math.round(Math.max(-1, Math.min(1, sample)) * 32767);
  const sign = s < 0 ? 0x80 : 0;
  if (sign) s = -s;
  if (s > 32635) s = 32635;
  s += 132;
  let exponent = 7;
  for (let mask = 0x4000; (s & mask) === 0 && exponent > 0; mask >>= 1) exponent--;
  const mantissa = (s >> (exponent + 3)) & 0x0f;
  return ~(sign | (exponent << 4) | mantissa) & 0xff;
}

class MulawCapture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = sampleRate / OUT_RATE; // input samples per output sample
    this.h = lowpass(sampleRate);
    this.history = new Float32Array(TAPS - 1); // the last raw samples of the previous block
    this.x = new Float32Array(0);
    this.y = new Float32Array(0);
    this.prev = 0; // the previous block's last filtered sample (index -1)
    this.pos = 0; // where the next output sample falls, in input samples from this block's start
    this.frame = new Uint8Array(FRAME);
    this.n = 0;
    this.energy = 0;
    this.running = true;
    this.port.onmessage = (e) => { if (e.data === "stop") this.running = false; };
  }

  emit(value) {
    this.frame[this.n++] = mulaw(value);
    this.energy += value * value;
    if (this.n === FRAME) {
      const level = Math.sqrt(this.energy / FRAME);
      this.port.postMessage({ frame: this.frame.buffer, level }, [this.frame.buffer]);
      this.frame = new Uint8Array(FRAME);
      this.n = 0;
      this.energy = 0;
    }
  }

  process(inputs) {
    if (!this.running) return false;
    const input = inputs[0] && inputs[0][0];
    if (!input || input.length === 0) return true;
    const len = input.length;
    const keep = TAPS - 1;
    if (this.x.length !== keep + len) {
      this.x = new Float32Array(keep + len);
      this.y = new Float32Array(len);
    }
    const { x, y, h } = this;
    x.set(this.history);
    x.set(input, keep);
    for (let i = 0; i < len; i++) {
      let acc = 0;
      for (let k = 0; k < TAPS; k++) acc += h[k] * x[i + k];
      y[i] = acc;
    }
    this.history.set(x.subarray(len));
    while (this.pos <= len - 1) {
      const i = Math.floor(this.pos);
      const f = this.pos - i;
      const a = i < 0 ? this.prev : y[i];
      const b = i + 1 < len ? y[i + 1] : a;
      this.emit(a + f * (b - a));
      this.pos += this.step;
    }
    this.pos -= len;
    this.prev = y[len - 1];
    return true;
  }
}

registerProcessor("mulaw-capture", MulawCapture);
