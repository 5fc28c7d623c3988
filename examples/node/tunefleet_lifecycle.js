#!/usr/bin/env node
// The Tunefleet lifecycle from Node.js: @grpc/grpc-js, with the API's .proto
// files loaded at run time from proto/ by @grpc/proto-loader (no generated code).
//
// Uploads a chat JSONL file (client streaming), waits for its validation,
// creates a LoRA fine-tuning job, follows its events to the end, deploys the
// fine-tuned model, chats with it (token streaming), and provokes and reads
// structured errors: a bad hyperparameter (INVALID_ARGUMENT naming the field),
// an unknown job id (NOT_FOUND), and a prompt the content filter blocks
// (INVALID_ARGUMENT, reason PROMPT_BLOCKED, with the filter results among the
// google.rpc details in `grpc-status-details-bin`).
//
// Every step is checked; the script exits non-zero at the first one that does
// not hold, so it doubles as a test (tests/clients/run_clients.py). See README.md.
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const path = require('path');
const util = require('util');

const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

const ROOT = path.resolve(__dirname, '..', '..');
const CHUNK = 64 * 1024;
const SYSTEM = 'You are Lumo Support, the assistant for the Lumo smart lamp by Aurora Home. ' +
    'Answer briefly.';
const QUESTION = 'How do I reset my Lumo?';
const BLOCKED_PROMPT = 'This shit lamp is broken';
const TERMINAL = new Set(['JOB_STATE_SUCCEEDED', 'JOB_STATE_FAILED', 'JOB_STATE_CANCELLED']);

class CheckFailed extends Error {}

function check(cond, what) {
  if (!cond) throw new CheckFailed(`expected: ${what}`);
  console.log(`  ok: ${what}`);
}

function step(title) {
  console.log(`\n== ${title}`);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const deadline = (seconds) => new Date(Date.now() + seconds * 1000);
const codeName = (code) => Object.keys(grpc.status).find((k) => grpc.status[k] === code) || code;

// --- command line ------------------------------------------------------------

const USAGE = `usage: tunefleet_lifecycle.js [options]
  --fleet DIR         a 'tunefleet local' data dir (fleet.json, credentials.json)
  --dataset HOST:PORT dataset service (or TUNEFLEET_DATASET)
  --scheduler H:P     scheduler service (or TUNEFLEET_SCHEDULER)
  --serving H:P       serving replica (or TUNEFLEET_SERVING)
  --api-key KEY       tenant API key (or TUNEFLEET_API_KEY)
  --tls-ca FILE       CA certificate of the servers (enables TLS)
  --proto DIR         the API's .proto files (default: <repo>/proto)
  --file FILE         training data (default: examples/data/support_chat.jsonl)
  --base-model ID     default: the fleet's first base model
  --epochs N          default 2
  --suffix S          default "node"
  --job-timeout SECS  how long to follow the job (default 480)
  --keep              leave the deployment in place`;

function parseArgs(argv) {
  const args = {
    fleet: '', dataset: '', scheduler: '', serving: '', apiKey: '', tlsCa: '',
    proto: path.join(ROOT, 'proto'),
    file: path.join(ROOT, 'examples', 'data', 'support_chat.jsonl'),
    baseModel: '', epochs: 2, suffix: 'node', jobTimeout: 480, keep: false,
  };
  const names = {
    '--fleet': 'fleet', '--dataset': 'dataset', '--scheduler': 'scheduler',
    '--serving': 'serving', '--api-key': 'apiKey', '--tls-ca': 'tlsCa', '--proto': 'proto',
    '--file': 'file', '--base-model': 'baseModel', '--epochs': 'epochs', '--suffix': 'suffix',
    '--job-timeout': 'jobTimeout',
  };
  for (let i = 0; i < argv.length; i++) {
    let [flag, value] = argv[i].split(/=(.*)/s);
    if (flag === '--keep') { args.keep = true; continue; }
    if (flag === '--help' || flag === '-h') { console.log(USAGE); process.exit(0); }
    if (!(flag in names)) { console.error(`unknown flag ${flag}\n${USAGE}`); process.exit(2); }
    if (value === undefined) value = argv[++i];
    if (value === undefined) { console.error(`${flag} needs a value`); process.exit(2); }
    const key = names[flag];
    args[key] = typeof args[key] === 'number' ? Number(value) : value;
  }
  return args;
}

// Addresses and key: flags, then TUNEFLEET_* variables, then --fleet DIR.
function resolve(args) {
  let fleet = {};
  let creds = {};
  if (args.fleet) {
    fleet = JSON.parse(fs.readFileSync(path.join(args.fleet, 'fleet.json'))).services || {};
    creds = JSON.parse(fs.readFileSync(path.join(args.fleet, 'credentials.json')));
  }
  const out = {};
  for (const service of ['dataset', 'scheduler', 'serving']) {
    out[service] = args[service] || process.env[`TUNEFLEET_${service.toUpperCase()}`] ||
        (fleet[service] || {}).address;
    if (!out[service]) {
      console.error(`no address for the ${service} service: pass --${service}, set ` +
          `TUNEFLEET_${service.toUpperCase()}, or --fleet DIR`);
      process.exit(2);
    }
  }
  out.key = args.apiKey || process.env.TUNEFLEET_API_KEY || creds.tenant_key;
  if (!out.key) {
    console.error('no API key: pass --api-key, set TUNEFLEET_API_KEY, or --fleet DIR');
    process.exit(2);
  }
  return out;
}

// --- the API, loaded from proto/ ---------------------------------------------

const PROTOS = ['files', 'jobs', 'models', 'deployments', 'inference'].map(
    (name) => `tunefleet/v1/${name}.proto`);

function loadApi(protoDir) {
  // keepCase: field names as in the .proto files; enums as their names;
  // int64 as JS numbers (every count here is far below 2^53).
  const definition = protoLoader.loadSync(PROTOS, {
    includeDirs: [protoDir], keepCase: true, longs: Number, enums: String, defaults: true,
    oneofs: true,
  });
  const api = grpc.loadPackageDefinition(definition).tunefleet.v1;
  // The same files as protobufjs types, to decode the error details: the
  // google.rpc Status and standard details (proto/google/rpc) and our own
  // messages packed in google.protobuf.Any.
  const types = new protobuf.Root();
  types.resolvePath = (origin, target) =>
    target.startsWith('google/protobuf/') ? target : path.join(protoDir, target);
  types.loadSync([...PROTOS, 'google/rpc/status.proto', 'google/rpc/error_details.proto'],
                 {keepCase: true});
  return {api, types};
}

// Prints an error's code, message and structured details; returns the details
// it could decode as {type, message}.
function describeError(err, types) {
  console.log(`  error: ${codeName(err.code)}: ${err.details}`);
  const details = [];
  const raw = err.metadata ? err.metadata.get('grpc-status-details-bin') : [];
  const rpcStatus = types.lookupType('google.rpc.Status');
  for (const buf of raw) {
    const status = rpcStatus.decode(buf);
    console.log(`  google.rpc.Status: code=${status.code} message=${JSON.stringify(status.message)}, ` +
        `${status.details.length} detail(s)`);
    for (const any of status.details) {
      const name = any.type_url.split('/').pop();
      let type = null;
      try { type = types.lookupType(name); } catch (e) { /* not one of ours */ }
      if (!type) {
        console.log(`    detail ${any.type_url} (${any.value.length} bytes)`);
        continue;
      }
      const message = type.toObject(type.decode(any.value), {enums: String, defaults: false});
      details.push({type: name, message});
      console.log(`    detail ${name}:`);
      for (const r of message.prompt_filter_results || []) {
        console.log(`      prompt ${r.category} severity=${r.severity} filtered=${!!r.filtered}`);
      }
      for (const f of message.prompt_filter_findings || []) {
        console.log(`      prompt finding ${f.filter}/${f.kind} filtered=${!!f.filtered}`);
      }
      if (name === 'google.rpc.ErrorInfo') details.reason = message.reason;
      if (!('prompt_filter_results' in message) && !('prompt_filter_findings' in message)) {
        console.log(`      ${JSON.stringify(message)}`);
      }
    }
  }
  return details;
}

// --- the lifecycle -------------------------------------------------------------

class Lifecycle {
  constructor(args, conn) {
    this.args = args;
    const {api, types} = loadApi(args.proto);
    this.types = types;
    const creds = args.tlsCa ? grpc.credentials.createSsl(fs.readFileSync(args.tlsCa)) :
                               grpc.credentials.createInsecure();
    const options = {'grpc.keepalive_time_ms': 30000};
    this.files = new api.DatasetService(conn.dataset, creds, options);
    this.jobs = new api.JobService(conn.scheduler, creds, options);
    this.models = new api.ModelService(conn.scheduler, creds, options);
    this.deployments = new api.DeploymentService(conn.scheduler, creds, options);
    this.inference = new api.InferenceService(conn.serving, creds, options);
    this.md = new grpc.Metadata();
    this.md.set('authorization', `Bearer ${conn.key}`);
    this.deploymentId = null;
  }

  // A unary call with a deadline, as a promise.
  unary(client, method, request, seconds = 10) {
    return util.promisify(client[method].bind(client))(request, this.md,
                                                       {deadline: deadline(seconds)});
  }

  async expectError(call, code, what) {
    try {
      await call();
    } catch (err) {
      if (err instanceof CheckFailed || err.code === undefined) throw err;
      const details = describeError(err, this.types);
      check(err.code === code, `${what} fails with ${codeName(code)}`);
      return {err, details};
    }
    throw new CheckFailed(`${what} succeeded; expected ${codeName(code)}`);
  }

  async close() {
    if (this.deploymentId && !this.args.keep) {
      try {
        await this.unary(this.deployments, 'DeleteDeployment', {deployment_id: this.deploymentId});
        console.log(`\ndeleted ${this.deploymentId}`);
      } catch (err) {
        console.log(`\ncould not delete ${this.deploymentId}: ${err.details}`);
      }
    }
    for (const c of [this.files, this.jobs, this.models, this.deployments, this.inference]) {
      c.close();
    }
  }

  async upload() {
    step(`1. upload ${this.args.file} (client streaming)`);
    const content = fs.readFileSync(this.args.file);
    const sha256 = crypto.createHash('sha256').update(content).digest('hex');
    const file = await new Promise((resolve, reject) => {
      const call = this.files.UploadFile(this.md, {deadline: deadline(60)}, (err, res) =>
        err ? reject(err) : resolve(res));
      (async () => {
        call.write({metadata: {filename: path.basename(this.args.file),
          purpose: 'FILE_PURPOSE_FINE_TUNE', expected_bytes: content.length,
          expected_sha256: sha256}});
        for (let pos = 0; pos < content.length; pos += CHUNK) {
          // Backpressure: wait for 'drain' when the stream's buffer is full.
          if (!call.write({chunk: content.subarray(pos, pos + CHUNK)})) {
            await new Promise((r) => call.once('drain', r));
          }
        }
        call.end();
      })().catch(reject);
    });
    console.log(`  ${file.id}: ${file.bytes} bytes, sha256 ${file.sha256.slice(0, 16)}`);
    check(file.id.startsWith('file-') && file.bytes === content.length, `uploaded as ${file.id}`);
    return file.id;
  }

  async waitValidated(fileId, base) {
    step('2. wait for validation');
    const end = Date.now() + 180e3;
    let f;
    for (;;) {
      f = await this.unary(this.files, 'GetFile', {file_id: fileId});
      if (f.status === 'FILE_STATUS_PROCESSED' || f.status === 'FILE_STATUS_ERROR') break;
      if (Date.now() > end) throw new CheckFailed(`${fileId} still ${f.status} after 180 s`);
      await sleep(250);
    }
    console.log(`  status ${f.status} ${f.status_details}`);
    check(f.status === 'FILE_STATUS_PROCESSED', `${fileId} is processed`);
    const report = await this.unary(this.files, 'ValidateFile',
                                    {file_id: fileId, base_model: base, epochs: this.args.epochs},
                                    60);
    const s = report.statistics;
    console.log(`  ${s.examples} examples, ${s.total_tokens} tokens (${s.trained_tokens} trained) ` +
        `with ${base}'s tokenizer; ${report.estimated_trained_tokens} trained tokens for ` +
        `${report.epochs} epochs`);
    check(report.valid && s.examples > 0, `${fileId} is valid for ${base}`);
  }

  async baseModel() {
    if (this.args.baseModel) return this.args.baseModel;
    const listed = await this.unary(this.models, 'ListModels', {page_size: 100});
    const bases = listed.models.filter((m) => m.kind === 'MODEL_KIND_BASE').map((m) => m.id);
    if (!bases.length) throw new CheckFailed('the fleet has no base model (pass --base-model)');
    return bases[0];
  }

  jobRequest(fileId, base) {
    return {
      base_model: base, training_file: fileId, validation_split: 0.1,
      adapter: 'ADAPTER_TYPE_LORA', suffix: this.args.suffix,
      request_id: `node-${crypto.randomBytes(12).toString('hex')}`,
      hyperparameters: {epochs: this.args.epochs, batch_size: 8, learning_rate_multiplier: 50,
        lora_rank: 16, lora_alpha: 32, lora_dropout: 0, seed: 7},
    };
  }

  async structuredErrors(fileId, base) {
    step('3. structured errors: a bad hyperparameter, an unknown job');
    const bad = this.jobRequest(fileId, base);
    bad.hyperparameters.epochs = -1;
    let {err, details} = await this.expectError(() => this.unary(this.jobs, 'CreateJob', bad),
                                       grpc.status.INVALID_ARGUMENT, 'CreateJob with epochs -1');
    check(err.details.includes('hyperparameters.epochs'),
          'the message names hyperparameters.epochs');
    check(details.reason === 'INVALID_FIELD' && details.some(
        (d) => d.type === 'google.rpc.BadRequest' &&
            d.message.field_violations.some((v) => v.field === 'hyperparameters.epochs')),
          'reason INVALID_FIELD; a BadRequest field violation on hyperparameters.epochs');
    const unknown = 'ftjob-doesnotexist';
    ({err} = await this.expectError(() => this.unary(this.jobs, 'GetJob', {job_id: unknown}),
                                    grpc.status.NOT_FOUND, `GetJob of ${unknown}`));
    check(err.details.includes(unknown), `the message names ${unknown}`);
  }

  async train(fileId, base) {
    step(`4. fine-tune ${base}: LoRA r=16 alpha=32, ${this.args.epochs} epochs, batch 8, ` +
         '10% validation split');
    let job = await this.unary(this.jobs, 'CreateJob', this.jobRequest(fileId, base), 30);
    console.log(`  created ${job.id} (${job.state})`);
    step(`5. follow ${job.id} (StreamJobEvents)`);
    let final = null;
    const events = this.jobs.StreamJobEvents({job_id: job.id}, this.md,
                                             {deadline: deadline(this.args.jobTimeout)});
    try {
      for await (const e of events) {
        if (e.payload === 'state') {
          console.log(`  [${e.sequence}] state ${e.state} ${e.message}`);
          if (TERMINAL.has(e.state)) {
            final = e.state;
            break;  // leaving the loop cancels the call
          }
        } else if (e.payload === 'metrics') {
          const m = e.metrics;
          const valid = m._valid_loss ? ` valid_loss ${m.valid_loss.toFixed(4)}` : '';
          console.log(`  [${e.sequence}] step ${m.step} epoch ${m.epoch.toFixed(2)} ` +
              `loss ${m.train_loss.toFixed(4)}${valid} acc ${m.train_token_accuracy.toFixed(3)} ` +
              `${m.tokens_per_second.toFixed(0)} tok/s`);
        } else if (e.payload === 'checkpoint_id') {
          console.log(`  [${e.sequence}] checkpoint ${e.checkpoint_id}`);
        } else if (e.message) {
          console.log(`  [${e.sequence}] ${e.message}`);
        }
      }
    } finally {
      events.cancel();
    }
    job = await this.unary(this.jobs, 'GetJob', {job_id: job.id});
    if (job.error && job.error.message) console.log(`  job error: ${job.error.code}: ${job.error.message}`);
    check(final === 'JOB_STATE_SUCCEEDED' && job.state === 'JOB_STATE_SUCCEEDED',
          `${job.id} succeeded`);
    const ev = job.evaluation || {};
    if (ev._valid_loss && ev._base_valid_loss) {
      console.log(`  validation loss: base ${ev.base_valid_loss.toFixed(4)}, ` +
                  `fine-tuned ${ev.valid_loss.toFixed(4)}`);
    }
    check(job.result_model.startsWith('ft:'), `result model ${job.result_model}`);
    return job.result_model;
  }

  async deploy(model) {
    step(`6. deploy ${model}`);
    let dep = await this.unary(this.deployments, 'CreateDeployment', {model, replicas: 1}, 30);
    this.deploymentId = dep.id;
    console.log(`  created ${dep.id} (${dep.state})`);
    const end = Date.now() + 180e3;
    while (dep.state !== 'DEPLOYMENT_STATE_ACTIVE') {
      if (dep.state === 'DEPLOYMENT_STATE_FAILED') {
        throw new CheckFailed(`${dep.id} failed: ${dep.error && dep.error.message}`);
      }
      if (Date.now() > end) throw new CheckFailed(`${dep.id} still ${dep.state} after 180 s`);
      await sleep(250);
      dep = await this.unary(this.deployments, 'GetDeployment', {deployment_id: dep.id});
    }
    check(true, `${dep.id} is serving (${dep.ready_replicas} ready replica(s))`);
    return dep.id;
  }

  chatRequest(depId, text) {
    return {deployment: depId, temperature: 0, max_tokens: 48,
      messages: [{role: 'system', content: SYSTEM}, {role: 'user', content: text}]};
  }

  async chat(depId) {
    step('7. chat (StreamChatCompletion)');
    console.log(`  user: ${QUESTION}`);
    process.stdout.write('  assistant: ');
    let text = '';
    let last = null;
    // A replica may learn of the deployment a moment after the scheduler
    // reports it serving: retry while it says so, for a few seconds.
    const retryable = new Set([grpc.status.UNAVAILABLE, grpc.status.NOT_FOUND,
      grpc.status.FAILED_PRECONDITION]);
    const end = Date.now() + 30e3;
    for (;;) {
      try {
        const call = this.inference.StreamChatCompletion(this.chatRequest(depId, QUESTION), this.md,
                                                         {deadline: deadline(120)});
        for await (const chunk of call) {
          if (chunk.delta) {
            text += chunk.delta;
            process.stdout.write(chunk.delta);
          }
          if (chunk.finish_reason !== 'FINISH_REASON_UNSPECIFIED') last = chunk;
        }
        break;
      } catch (err) {
        if (err.code === undefined || text || !retryable.has(err.code) || Date.now() > end) {
          console.log();
          if (err.code !== undefined) describeError(err, this.types);
          throw new CheckFailed('the chat failed');
        }
        await sleep(250);
      }
    }
    console.log();
    check(last !== null, `the stream ended with finish_reason ${last && last.finish_reason}, ` +
        `usage ${last && last.usage.prompt_tokens}+${last && last.usage.completion_tokens} tokens`);
  }

  async blocked(depId) {
    step('8. a prompt the content filter blocks');
    console.log(`  user: ${BLOCKED_PROMPT}`);
    const {details} = await this.expectError(async () => {
      const call = this.inference.StreamChatCompletion(this.chatRequest(depId, BLOCKED_PROMPT),
                                                       this.md, {deadline: deadline(30)});
      for await (const chunk of call) void chunk;  // a server stream fails while it is read
    }, grpc.status.INVALID_ARGUMENT, 'the profane prompt');
    check(details.some((d) => (d.message.prompt_filter_results || []).some(
        (r) => r.filtered && r.category === 'CONTENT_FILTER_CATEGORY_PROFANITY')),
          'the status details name the profanity category as filtered');
    check(details.reason === 'PROMPT_BLOCKED', 'ErrorInfo reason PROMPT_BLOCKED');
  }

  async run() {
    const fileId = await this.upload();
    const base = await this.baseModel();
    await this.waitValidated(fileId, base);
    await this.structuredErrors(fileId, base);
    const model = await this.train(fileId, base);
    const depId = await this.deploy(model);
    await this.chat(depId);
    await this.blocked(depId);
  }
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const life = new Lifecycle(args, resolve(args));
  try {
    await life.run();
  } catch (err) {
    if (err instanceof CheckFailed) {
      console.error(`FAILED: ${err.message}`);
    } else if (err.code !== undefined && err.details !== undefined) {
      console.error('FAILED: an unexpected RPC error');
      describeError(err, life.types);
    } else {
      console.error(err);
    }
    return 1;
  } finally {
    await life.close();
  }
  console.log('\nthe Node client ran the whole lifecycle');
  return 0;
}

if (require.main === module) {
  main().then((code) => { process.exitCode = code; });
}

module.exports = {Lifecycle, parseArgs, resolve, describeError};
