// The page's fallback sample (static/sample.js) of every operation listed by GET /services,
// as the page builds it for an operation without an example.
//
// usage: node form_samples.mjs '{"sample_js": PATH}' < listing.json
// Prints one JSON line per operation: {"mode", "service", "operation", "sample"}.
import fs from "node:fs";

const opts = JSON.parse(process.argv[2]);
const window = {};
new Function("window", fs.readFileSync(opts.sample_js, "utf8"))(window);
const listing = JSON.parse(fs.readFileSync(0, "utf8"));
for (const s of listing.services) {
  for (const [operation, op] of Object.entries(s.operations)) {
    const schema = op.input_schema;
    const sample = window.aiecsSample({ ...schema, examples: undefined }, schema);
    process.stdout.write(JSON.stringify({ mode: s.mode, service: s.service, operation,
                                          sample }) + "\n");
  }
}
