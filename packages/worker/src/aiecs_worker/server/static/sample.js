// aiecs page: a valid first input built from an operation's JSON Schema, for an operation
// listed without an example (GET /services gives most operations one: Service.examples).
// Loaded before app.js; tests/e2e/test_form_samples.py runs it on every installed
// operation's schema and validates the result with the operation's input model.
"use strict";

(() => {
  // A valid input built from a JSON Schema (what pydantic's model_json_schema gives), for
  // an operation listed without an example: the required properties (and a message's
  // content or text), each the smallest value its constraints accept; a string named like
  // an identifier (model, id, name) gets an identifier, any other a sentence.
  function sampleOf(schema, root, depth = 0, name = "") {
    if (!schema || depth > 8) return null;
    if (schema.$ref) {
      const def = schema.$ref.split("/").pop();
      return sampleOf(((root.$defs || root.definitions) || {})[def], root, depth + 1, name);
    }
    if ("default" in schema && schema.default !== null) return schema.default;
    if (Array.isArray(schema.examples) && schema.examples.length) return schema.examples[0];
    if ("const" in schema) return schema.const;
    if (Array.isArray(schema.enum) && schema.enum.length) {
      return schema.enum.includes("user") ? "user" : schema.enum[0];
    }
    const options = schema.anyOf || schema.oneOf;
    if (options) {
      const pick = options.find((o) => o.type !== "null") || options[0];
      return sampleOf(pick, root, depth + 1, name);
    }
    switch (schema.type) {
      case "object": {
        const out = {};
        const props = schema.properties || {};
        const wanted = new Set(schema.required || []);
        for (const key of ["content", "text"]) if (key in props) wanted.add(key);
        for (const key of wanted) out[key] = sampleOf(props[key], root, depth + 1, key);
        return out;
      }
      case "array":
        return Array.from({ length: Math.max(1, schema.minItems || 0) },
                          () => sampleOf(schema.items, root, depth + 1, name));
      case "integer":
      case "number":
        return Math.max(1, schema.minimum ?? schema.exclusiveMinimum ?? 1);
      case "boolean":
        return false;
      case "string":
        return (/(^|_)(model|id|name)$/.test(name) ? "example-id" : "Hello from the aiecs page!")
          .slice(0, schema.maxLength || 1000);
      default:
        return {};
    }
  }

  window.aiecsSample = sampleOf;
})();
