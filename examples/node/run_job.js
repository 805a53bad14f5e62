#!/usr/bin/env node
// Drives a kdmkb distillation job end to end over the coordinator's gRPC API, from Node.js:
// registers two KBs and their alignment, creates and starts a cooperative job, follows its rounds
// (on stderr) and prints the KBs' test metrics as JSON (on stdout).
//
//   node run_job.js ADDRESS KB_DIR_A KB_DIR_B ENTITIES_TSV RELATIONS_TSV
//
// Each KB is named after its folder. Paths are the server's to read: give them as `kdmkb serve`
// sees them, inside its data roots. KDMKB_TOKEN, when set, is sent as "authorization: Bearer ...".
// Any gRPC error ends the run with exit code 1, its status code, its message and, for
// INVALID_ARGUMENT, the fields it names (the google.rpc.BadRequest in the status details).
"use strict";

const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTOS = path.join(__dirname, "..", "..", "protos");
// Unary calls may start a KB's worker, which takes seconds; WatchJob has no deadline.
const RPC_SECONDS = 120;
// Small enough for a nations-sized KB to finish in seconds.
const WORKER_SETTINGS = { dim: 16, batch_size: 64, negatives: 8, learning_rate: 0.01 };
const JOB_SETTINGS = { rounds: 3, steps_per_round: 5, eval_every: 1, checkpoint_every: 0, seed: 0, top_k: 4 };
// The report's metric names (those of `kdmkb run`'s report.json) and their Metrics fields.
const REPORT_KEYS = [["mrr", "mrr"], ["mr", "mr"], ["hits@1", "hits_at_1"], ["hits@3", "hits_at_3"], ["hits@10", "hits_at_10"]];

// google.protobuf.Value of a JSON value: one field of its `kind` oneof set. The field names are
// camelCase even with keepCase: proto-loader takes the well-known types from protobufjs's own
// definitions, not from a .proto file.
function toValue(value) {
  if (value === null) return { nullValue: "NULL_VALUE" };
  if (Array.isArray(value)) return { listValue: { values: value.map(toValue) } };
  switch (typeof value) {
    case "number":
      return { numberValue: value };
    case "string":
      return { stringValue: value };
    case "boolean":
      return { boolValue: value };
    case "object":
      return { structValue: toStruct(value) };
    default:
      throw new TypeError(`no google.protobuf.Value for a ${typeof value}`);
  }
}

// google.protobuf.Struct of a plain object.
function toStruct(object) {
  return { fields: Object.fromEntries(Object.entries(object).map(([key, value]) => [key, toValue(value)])) };
}

// The fields of a protobuf message's wire bytes, as [number, value] (a Buffer for length-delimited
// fields, a number for varints); enough to read google.rpc.Status without its .proto files.
function* wireFields(buffer) {
  let offset = 0;
  const varint = () => {
    let result = 0;
    for (let shift = 1; ; shift *= 128) {
      const byte = buffer[offset++];
      result += (byte & 0x7f) * shift;
      if (byte < 0x80) return result;
    }
  };
  while (offset < buffer.length) {
    const key = varint();
    const type = key % 8;
    if (type === 0) yield [Math.floor(key / 8), varint()];
    else if (type === 2) {
      const length = varint();
      yield [Math.floor(key / 8), buffer.subarray(offset, (offset += length))];
    } else if (type === 1 || type === 5) offset += type === 1 ? 8 : 4;
    else return; // groups: not in these messages
  }
}

// [field, description] pairs of the google.rpc.BadRequest in a grpc-status-details-bin trailer.
function fieldViolations(error) {
  const violations = [];
  for (const status of error.metadata ? error.metadata.get("grpc-status-details-bin") : []) {
    for (const [number, any] of wireFields(status)) {
      if (number !== 3) continue; // Status.details: repeated Any
      const parts = Object.fromEntries(wireFields(any)); // Any: 1 type_url, 2 value
      if (!parts[1] || !parts[1].toString().endsWith("/google.rpc.BadRequest")) continue;
      for (const [field, violation] of wireFields(parts[2] || Buffer.alloc(0))) {
        if (field !== 1) continue; // BadRequest.field_violations: 1 field, 2 description
        const strings = Object.fromEntries(wireFields(violation));
        violations.push([String(strings[1] || ""), String(strings[2] || "")]);
      }
    }
  }
  return violations;
}

function connect(address) {
  const definition = protoLoader.loadSync("kdmkb/coordinator/v1/coordinator.proto", {
    includeDirs: [PROTOS],
    keepCase: true,
    longs: Number,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  const { Coordinator } = grpc.loadPackageDefinition(definition).kdmkb.coordinator.v1;
  return new Coordinator(address, grpc.credentials.createInsecure());
}

function metadata() {
  const headers = new grpc.Metadata();
  if (process.env.KDMKB_TOKEN) headers.set("authorization", `Bearer ${process.env.KDMKB_TOKEN}`);
  return headers;
}

// A unary call as a promise, with the token and a deadline.
function call(client, method, request) {
  const deadline = new Date(Date.now() + RPC_SECONDS * 1000);
  return new Promise((resolve, reject) => {
    client[method](request, metadata(), { deadline }, (error, response) => (error ? reject(error) : resolve(response)));
  });
}

function describeRound(event, names) {
  const kbs = names.map((kb) => {
    const progress = event.progress[kb];
    const valid = progress.valid ? ` valid mrr ${progress.valid.mrr.toFixed(4)}` : "";
    return `${kb}: loss ${progress.loss.toFixed(4)} kd ${progress.kd_loss.toFixed(4)}${valid}`;
  });
  return `round ${event.round}/${event.total_rounds} (${event.round_seconds.toFixed(2)} s)  ${kbs.join("  ")}`;
}

async function main([address, dirA, dirB, entities, relations]) {
  if (!relations) {
    console.error("usage: node run_job.js ADDRESS KB_DIR_A KB_DIR_B ENTITIES_TSV RELATIONS_TSV");
    return 2;
  }
  const client = connect(address);
  const names = [];
  for (const dir of [dirA, dirB]) {
    const request = { name: path.basename(path.resolve(dir)), data_dir: dir, worker_type: "transe", settings: toStruct(WORKER_SETTINGS) };
    const { kb } = await call(client, "RegisterKB", request);
    console.error(`registered ${kb.name}: ${kb.num_entities} entities, ${kb.num_relations} relations, ${kb.num_train} train triples`);
    names.push(kb.name);
  }
  const { alignment } = await call(client, "RegisterAlignment", { kb_a: names[0], kb_b: names[1], entities_path: entities, relations_path: relations });
  console.error(`aligned ${alignment.num_entity_pairs} entity and ${alignment.num_relation_pairs} relation pairs`);

  const created = await call(client, "CreateJob", { strategy: "cooperative", kbs: names, settings: toStruct(JOB_SETTINGS) });
  const jobId = created.job.job_id;
  await call(client, "StartJob", { job_id: jobId });
  console.error(`started job ${jobId}`);
  for await (const event of client.WatchJob({ job_id: jobId }, metadata())) {
    if (event.kind === "round") console.error(describeRound(event, names));
    else if (event.message) console.error(`${event.kind}: ${event.message}`);
  }

  const { job } = await call(client, "GetJob", { job_id: jobId });
  const state = job.state.replace(/^JOB_STATE_/, "");
  const kbs = Object.fromEntries(
    names.filter((kb) => kb in job.test_metrics).map((kb) => [kb, Object.fromEntries(REPORT_KEYS.map(([key, field]) => [key, job.test_metrics[kb][field]]))]),
  );
  console.log(JSON.stringify({ job_id: job.job_id, strategy: job.strategy, state, rounds: job.round, kbs }, null, 2));
  if (state !== "SUCCEEDED") console.error(`job ${jobId} ${state}${job.error ? `: ${job.error}` : ""}`);
  client.close();
  return state === "SUCCEEDED" ? 0 : 1;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (error) => {
    if (error.code === undefined) throw error; // not a gRPC error: a bug of this script
    console.error(`gRPC error ${grpc.status[error.code]} (${error.code}): ${error.details}`);
    for (const [field, description] of fieldViolations(error)) console.error(`  field ${field}: ${description}`);
    process.exit(1);
  },
);
