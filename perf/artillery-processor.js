// Artillery processor for perf/artillery.yaml: makes every upload unique.
//
// The proxy coalesces identical requests in flight and caches results, both
// keyed by the sha256 of the image bytes, so sending the same file over and
// over measures the cache, not the model (Cache-Control: no-cache skips the
// cache but not the coalescing). Bytes after the JPEG end-of-image marker
// (FF D9) are ignored by decoders: a unique trailer keeps the picture and
// makes the body unique, as perf/images.go does for `make perf`.
//
// Artillery's formData cannot send a Buffer with a filename, so the
// multipart/form-data body is built here: one "file" field, filename and
// Content-Type image/jpeg, the upload FastAPI clients send.
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const path = require('path');

const jpeg = fs.readFileSync(path.join(__dirname, '..', 'proxy', 'testdata', 'grace_hopper.jpg'));
const boundary = `batchgate-${crypto.randomBytes(12).toString('hex')}`;
const head = Buffer.from(
  `--${boundary}\r\n` +
    'Content-Disposition: form-data; name="file"; filename="grace_hopper.jpg"\r\n' +
    'Content-Type: image/jpeg\r\n\r\n'
);
const tail = Buffer.from(`\r\n--${boundary}--\r\n`);

// uniqueUpload (a beforeRequest hook) sets the body: the JPEG, then a trailer
// unique across Artillery's worker processes, then the closing boundary.
function uniqueUpload(requestParams, context, ee, next) {
  const trailer = Buffer.from(`batchgate-artillery-${crypto.randomUUID()}`);
  requestParams.body = Buffer.concat([head, jpeg, trailer, tail]);
  requestParams.headers = Object.assign({}, requestParams.headers, {
    'content-type': `multipart/form-data; boundary=${boundary}`,
  });
  return next();
}

module.exports = { uniqueUpload };
