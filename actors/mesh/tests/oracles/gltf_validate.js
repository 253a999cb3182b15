// Runs the Khronos glTF validator (npm gltf-validator) on GLB files.
// Usage: node gltf_validate.js <gltf-validator package dir> <file.glb> ...
// Prints each report's counts; exits 1 if any file has errors.
const fs = require("fs");
const validator = require(process.argv[2]);

(async () => {
  let failed = false;
  for (const path of process.argv.slice(3)) {
    const report = await validator.validateBytes(new Uint8Array(fs.readFileSync(path)));
    const i = report.issues;
    console.log(`${path}: ${i.numErrors} errors, ${i.numWarnings} warnings, ${i.numInfos} infos`);
    for (const m of i.messages.filter((m) => m.severity === 0)) {
      console.log(`  ${m.code}: ${m.message} at ${m.pointer}`);
    }
    if (i.numErrors > 0) failed = true;
  }
  process.exit(failed ? 1 : 0);
})().catch((e) => {
  console.error(e);
  process.exit(2);
});
