// Run a keras_music_ssl ONNX export on a WAV file with onnxruntime-node; print the outputs as JSON.
//
//   node js/run_onnx.mjs EXPORT_DIR AUDIO.wav            # track.onnx: the whole file, any length
//   node js/run_onnx.mjs EXPORT_DIR AUDIO.wav --clips    # clips.onnx: the file as 4 s clips (batch)
//
// EXPORT_DIR is what `kmssl export --format onnx` writes. The WAV must be mono 16 kHz, PCM 16-bit
// or float 32-bit (decode and resample anything else first). Output: {"signature", "tags" (a
// tagger's, from the graph) and every other output of the graph as (nested) arrays}.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';

function readWav(path) {
  const buf = readFileSync(path);
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const tag = (at) => buf.toString('latin1', at, at + 4);
  if (tag(0) !== 'RIFF' || tag(8) !== 'WAVE') throw new Error(`${path}: not a WAV file`);
  let format = null;
  for (let at = 12; at + 8 <= buf.length; at += 8 + view.getUint32(at + 4, true) + (view.getUint32(at + 4, true) % 2)) {
    const size = view.getUint32(at + 4, true);
    if (tag(at) === 'fmt ') {
      format = { code: view.getUint16(at + 8, true), channels: view.getUint16(at + 10, true),
                 rate: view.getUint32(at + 12, true), bits: view.getUint16(at + 22, true) };
      if (format.code === 0xfffe) format.code = view.getUint16(at + 32, true);  // WAVE_FORMAT_EXTENSIBLE
    } else if (tag(at) === 'data') {
      if (!format) throw new Error(`${path}: data before fmt`);
      if (format.channels !== 1 || format.rate !== 16000) {
        throw new Error(`${path}: ${format.channels} channel(s) at ${format.rate} Hz; mono 16 kHz expected`);
      }
      const body = buf.subarray(at + 8, at + 8 + size);
      if (format.code === 3 && format.bits === 32) {
        return Float32Array.from({ length: body.length / 4 }, (_, i) => body.readFloatLE(4 * i));
      }
      if (format.code === 1 && format.bits === 16) {
        return Float32Array.from({ length: body.length / 2 }, (_, i) => body.readInt16LE(2 * i) / 32768);
      }
      throw new Error(`${path}: WAV format ${format.code}/${format.bits} bit; PCM 16 or float 32 expected`);
    }
  }
  throw new Error(`${path}: no data chunk`);
}

const [dir, wav, mode] = process.argv.slice(2);
if (!dir || !wav) {
  console.error('usage: node run_onnx.mjs EXPORT_DIR AUDIO.wav [--clips]');
  process.exit(2);
}
const meta = JSON.parse(readFileSync(join(dir, 'keras_music_ssl.json'), 'utf8'));
const samples = readWav(wav);
const clips = mode === '--clips';
const session = await ort.InferenceSession.create(join(dir, clips ? 'clips.onnx' : 'track.onnx'));
let waveform;
if (clips) {  // whole clips only: clips.onnx takes (batch, clip_samples) as it is
  const batch = Math.floor(samples.length / meta.clip_samples);
  waveform = new ort.Tensor('float32', samples.subarray(0, batch * meta.clip_samples), [batch, meta.clip_samples]);
} else {
  waveform = new ort.Tensor('float32', samples, [samples.length]);
}
const outputs = await session.run({ waveform });
const result = { signature: meta.kind === 'tagger' ? (clips ? 'tag' : 'tag_track') : (clips ? 'embed' : 'embed_track') };
for (const [name, tensor] of Object.entries(outputs)) {
  if (name === 'tags') {  // a tagger's graph outputs its tag names (onnxruntime-node shows no model metadata)
    result.tags = Array.from(tensor.data);
    continue;
  }
  const flat = Array.from(tensor.data, Number);
  const rows = tensor.dims.length === 2 ? tensor.dims[1] : 0;
  result[name] = rows ? Array.from({ length: tensor.dims[0] }, (_, i) => flat.slice(i * rows, (i + 1) * rows))
                      : tensor.dims.length === 0 ? flat[0] : flat;
}
console.log(JSON.stringify(result));
