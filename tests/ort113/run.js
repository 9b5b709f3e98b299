// Run an ONNX model on onnxruntime-node 1.13.1 (JDLL's newest onnxruntime) for tests/test_export.py.
// usage: node run.js MODEL.onnx INPUT.f32 '[b,y,x,c]' INPUT_NAME OUTPUT.f32
// Input and output are raw little-endian float32; the output's dims and names are printed as JSON.
const fs = require('fs');
const ort = require('onnxruntime-node');

async function main() {
  const [model, inputFile, shapeJson, inputName, outputFile] = process.argv.slice(2);
  const bytes = fs.readFileSync(inputFile);
  const data = new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length));
  const session = await ort.InferenceSession.create(model);
  const results = await session.run({ [inputName]: new ort.Tensor('float32', data, JSON.parse(shapeJson)) });
  const output = results[session.outputNames[0]];
  fs.writeFileSync(outputFile, Buffer.from(output.data.buffer, output.data.byteOffset, output.data.byteLength));
  console.log(JSON.stringify({
    version: require('onnxruntime-node/package.json').version,
    inputs: session.inputNames,
    outputs: session.outputNames,
    dims: output.dims,
  }));
}

main().catch((error) => {
  console.error(error.message);
  process.exit(1);
});
