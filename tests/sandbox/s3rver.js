// Starts @20minutes/s3rver (an S3-compatible server that checks SigV4 signatures) for the
// sandbox and the tests. Run with `node --openssl-legacy-provider` (its paginated listings
// need it). Listens on 127.0.0.1 only.
//
//   node --openssl-legacy-provider s3rver.js --port 4569 --dir STATE/s3 --buckets a,b \
//        --access-key ID --secret-env SANDBOX_S3_SECRET
//
// The secret comes from the environment, never argv. Prints "ready <port>" once listening.
'use strict'
const S3rver = require('@20minutes/s3rver')
const { DUMMY_ACCOUNT } = require('@20minutes/s3rver/lib/models/account')

const args = {}
for (let i = 2; i < process.argv.length; i += 2) args[process.argv[i].replace(/^--/, '')] = process.argv[i + 1]

const secret = process.env[args['secret-env'] || 'SANDBOX_S3_SECRET']
if (args['access-key'] && secret) DUMMY_ACCOUNT.createKeyPair(args['access-key'], secret)

const server = new S3rver({
  address: '127.0.0.1',
  port: Number(args.port || 0),
  directory: args.dir,
  silent: true,
  configureBuckets: (args.buckets || '').split(',').filter(Boolean).map((name) => ({ name })),
})
server.run().then(
  (addr) => console.log(`ready ${addr.port}`),
  (err) => {
    console.error(`s3rver: ${err.message}`)
    process.exit(1)
  }
)
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => server.close().finally(() => process.exit(0)))
