// Package image builds, opens and verifies boardlink OTA images: one signed
// file that carries a board's new slot contents (the payload) together with
// a manifest saying what the payload is, which board models it fits, and
// how to check every byte of it.
//
// # The file
//
// An image is a plain tar archive (POSIX ustar, with a pax header only
// where ustar cannot say it, e.g. for a payload of 8 GiB or more) holding
// exactly three regular files, in this order:
//
//	manifest.json  the manifest (JSON, below); these exact bytes are signed
//	manifest.sig   the raw 64-byte ed25519 signature of manifest.json
//	payload        the payload, stored contiguously
//
// followed by the tar end-of-archive marker (at least two zero blocks, and
// nothing but zeros after it). Standard tools read it: `tar tvf IMAGE`
// lists the members, `tar xf IMAGE` extracts them, and an image rebuilt
// with `tar cf IMAGE manifest.json manifest.sig payload` opens and
// verifies like the original. Because tar stores a member's bytes
// contiguously, the payload is a byte range of the file
// ([Image.PayloadOffset], [Manifest.PayloadSize]), and chunk i of it is
// the range [Manifest.ChunkRange] shifted by that offset: a board or a
// proxy can fetch single chunks with HTTP Range requests.
//
// # The manifest
//
// The manifest is a JSON object with exactly the fields of [Manifest]:
//
//	{
//	  "format": 1,
//	  "models": ["imx8"],
//	  "version": "1.4.2",
//	  "payload_size": 3145728,
//	  "payload_sha256": "9f86d0...",
//	  "chunk_size": 1048576,
//	  "chunks": ["2c26b4...", "fcde2b...", "b5bb9d..."],
//	  "created": "2026-03-01T12:00:00Z",
//	  "key_id": "1c3e5a7b9d0f2e4a"
//	}
//
// The payload is cut into chunks of chunk_size bytes (a power of two from
// 4 KiB to 64 MiB; the last chunk may be shorter), and chunks lists the
// sha256 of each in order. The signature covers the manifest bytes, the
// manifest covers every chunk and the whole payload: verifying the
// signature with a trusted key, then each chunk as it arrives, checks
// every byte of an update before it is used. [ParseManifest] is strict:
// unknown, duplicate or differently-cased fields, trailing data and any
// broken invariant ([Manifest.Validate]) are refused.
//
// Versions are dot-separated decimal numbers with an optional pre-release
// suffix; [CompareVersions] orders them (1.2.10 > 1.2.9, 2.0 == 2.0.0,
// 2.0-rc1 < 2.0).
//
// # Keys
//
// Keys are ed25519. [WriteKeyPair] stores the private key as PEM "PRIVATE
// KEY" (PKCS#8, mode 0600) and the public key beside it as PATH.pub, PEM
// "PUBLIC KEY" (PKIX, mode 0644): the formats of `openssl genpkey
// -algorithm ed25519` and `openssl pkey -pubout`, so keys made by either
// tool work with the other. A key's id ([KeyID]) is the first 16 hex
// digits of the sha256 of its 32 raw public key bytes; the manifest names
// the key that signed it, for the error messages of a board that does not
// trust it.
//
// # Verifying an image by hand
//
//	tar xf IMAGE manifest.json manifest.sig payload
//	openssl pkeyutl -verify -pubin -inkey key.pub -rawin -in manifest.json -sigfile manifest.sig
//	sha256sum payload          # compare with payload_sha256 in manifest.json
//
// openssl prints "Signature Verified Successfully" (OpenSSL 3.0 or later,
// which verifies ed25519 with -rawin).
//
// # Errors
//
// Callers branch on three sentinels with errors.Is: [ErrFormat] (not an
// image, a truncated or malformed one, or a manifest that breaks an
// invariant), [ErrSignature] (no trusted key signed this manifest) and
// [ErrChecksum] (a chunk or the payload does not match the manifest). The
// checks a board needs beyond those (the model it is, the version it runs)
// use [Manifest.Fits] and [CompareVersions].
package image
