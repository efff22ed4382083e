// The BullMQ side of mosaic-bench: one case per run, against the valkey-server the Rust harness
// started (which flushes it before every case). Prints one JSON line: {jobs, seconds, rate,
// server, client_cpu_seconds}: server holds the server's `INFO cpu commandstats` just before and
// just after the timed section ({before, after}); client_cpu_seconds is this process's CPU time
// (user + system) in it.
//
//   node bench.mjs --socket PATH --jobs N --concurrency C --mode enqueue|e2e
//
// enqueue: `queue.add` of N no-op jobs with IN_FLIGHT adds outstanding at once.
// e2e:     N jobs pre-filled with `addBulk` (not timed), then a Worker with concurrency C and a
//          no-op processor; timed from creating the Worker until N 'completed' events.
import { Queue, Worker } from 'bullmq';
import { Redis } from 'ioredis';

const IN_FLIGHT = 100;
const BULK_CHUNK = 1000;
const QUEUE = 'mosaic-bench';

function parseArgs(argv) {
  const args = { concurrency: 1, mode: 'e2e' };
  for (let i = 0; i < argv.length; i += 2) {
    const [flag, value] = [argv[i], argv[i + 1]];
    if (value === undefined) throw new Error(`${flag} needs a value`);
    switch (flag) {
      case '--socket': args.socket = value; break;
      case '--jobs': args.jobs = Number(value); break;
      case '--concurrency': args.concurrency = Number(value); break;
      case '--mode': args.mode = value; break;
      default: throw new Error(`unknown argument ${flag}`);
    }
  }
  if (!args.socket) throw new Error('--socket is required');
  if (!(args.jobs > 0)) throw new Error('--jobs must be a positive number');
  if (!(args.concurrency > 0)) throw new Error('--concurrency must be a positive number');
  if (args.mode !== 'enqueue' && args.mode !== 'e2e') throw new Error('--mode is enqueue or e2e');
  return args;
}

// The server's counters (`INFO cpu commandstats`), read on a connection of its own; the Rust
// harness parses them exactly as it parses its own.
function serverStats(admin) {
  return admin.call('INFO', 'cpu', 'commandstats');
}

async function enqueue(queue, admin, jobs) {
  let next = 0;
  const before = await serverStats(admin);
  const cpu = process.cpuUsage();
  const started = process.hrtime.bigint();
  const lane = async () => {
    while (next < jobs) {
      next += 1;
      await queue.add('noop', {});
    }
  };
  await Promise.all(Array.from({ length: Math.min(IN_FLIGHT, jobs) }, lane));
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  const { user, system } = process.cpuUsage(cpu);
  return { seconds, cpuSeconds: (user + system) / 1e6, before, after: await serverStats(admin) };
}

async function endToEnd(queue, admin, connection, jobs, concurrency) {
  for (let done = 0; done < jobs; done += BULK_CHUNK) {
    const n = Math.min(BULK_CHUNK, jobs - done);
    await queue.addBulk(Array.from({ length: n }, () => ({ name: 'noop', data: {} })));
  }
  let completed = 0;
  let failed = null;
  let finish;
  const finished = new Promise((resolve) => { finish = resolve; });
  const before = await serverStats(admin);
  const cpu = process.cpuUsage();
  const started = process.hrtime.bigint();
  const worker = new Worker(QUEUE, async () => {}, { connection, concurrency });
  worker.on('completed', () => {
    completed += 1;
    if (completed === jobs) finish(process.hrtime.bigint());
  });
  worker.on('failed', (job, err) => {
    failed = err;
    finish(process.hrtime.bigint());
  });
  const ended = await finished;
  const { user, system } = process.cpuUsage(cpu);
  const after = await serverStats(admin);
  await worker.close();
  if (failed) throw new Error(`a job failed: ${failed.message}`);
  const cpuSeconds = (user + system) / 1e6;
  return { seconds: Number(ended - started) / 1e9, cpuSeconds, before, after };
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const connection = { path: args.socket, maxRetriesPerRequest: null };
  const queue = new Queue(QUEUE, { connection });
  await queue.waitUntilReady();
  const admin = new Redis({ path: args.socket, maxRetriesPerRequest: null });
  const { seconds, cpuSeconds, before, after } = args.mode === 'enqueue'
    ? await enqueue(queue, admin, args.jobs)
    : await endToEnd(queue, admin, connection, args.jobs, args.concurrency);
  admin.disconnect();
  const counts = await queue.getJobCounts('waiting', 'completed');
  const expected = args.mode === 'enqueue' ? counts.waiting : counts.completed;
  await queue.close();
  if (expected !== args.jobs) {
    throw new Error(`expected ${args.jobs} jobs, found ${JSON.stringify(counts)}`);
  }
  console.log(JSON.stringify({
    jobs: args.jobs,
    seconds,
    rate: args.jobs / seconds,
    server: { before, after },
    client_cpu_seconds: cpuSeconds,
  }));
}

main().catch((err) => {
  console.error(`bench.mjs: ${err.stack || err}`);
  process.exit(1);
});
