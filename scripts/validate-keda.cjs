// Validates KEDA objects (a JSON array on stdin) with @kubernetes-models/keda, whose
// validators are generated from KEDA's CRD schemas. Prints one line per invalid object and
// exits 1 if any is invalid. Run with NODE_PATH pointing at the tools' node_modules.
"use strict";
const { ScaledObject } = require("@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject");
const { TriggerAuthentication } = require("@kubernetes-models/keda/keda.sh/v1alpha1/TriggerAuthentication");

const models = { ScaledObject, TriggerAuthentication };
const objects = JSON.parse(require("fs").readFileSync(0, "utf8"));
let invalid = 0;
for (const object of objects) {
  const Model = models[object.kind];
  if (!Model) {
    console.log(`${object.kind}/${object.metadata.name}: no KEDA model for this kind`);
    invalid += 1;
    continue;
  }
  try {
    new Model(object).validate();
  } catch (err) {
    console.log(`${object.kind}/${object.metadata.name}: ${err.message}`);
    invalid += 1;
  }
}
console.log(`keda models: ${objects.length - invalid} valid, ${invalid} invalid`);
process.exit(invalid ? 1 : 0);
