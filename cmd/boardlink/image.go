package main

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/boardlink/boardlink/image"
	"github.com/boardlink/boardlink/internal/units"
)

func newImageCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "image COMMAND",
		Short: "Make, sign and inspect OTA images",
		Long: `image makes the signed images that A/B updates install, and the ed25519
keys that sign them.

An image is one file, a plain tar archive holding three members in this
order: manifest.json (what the image is), manifest.sig (the raw 64-byte
ed25519 signature of manifest.json) and payload (the new slot contents).
The manifest names the board models the image fits, the version, the
payload's size and sha256, a chunk size and the sha256 of every chunk, so
that a board checks every byte it receives, and fetches only the chunks it
does not already hold. Standard tools read it:

  tar tvf update.img
  tar xf update.img
  openssl pkeyutl -verify -pubin -inkey signing.key.pub -rawin \
      -in manifest.json -sigfile manifest.sig
  sha256sum payload

A board trusts the public keys given with 'boardlinkd --trust-key
PATH.pub' (repeatable) or listed in its config file, and no others. It
refuses, without touching a slot, an image with a bad signature, a
tampered payload or chunk, a model it is not, an older version than it
runs (unless forced), or a truncated file.

Versions are dot-separated numbers with an optional pre-release suffix,
compared number by number: 1.2.10 is newer than 1.2.9, 2.0 equals 2.0.0,
and 2.0.0-rc.1 is older than 2.0.0.`,
		Example: `  boardlink image keygen --out ~/.config/boardlink/signing.key
  boardlink image build --key ~/.config/boardlink/signing.key --model imx8 --version 1.4.2 \
      rootfs.ext4 -o update-1.4.2.img
  boardlink image inspect update-1.4.2.img --verify-with ~/.config/boardlink/signing.key.pub`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return &usageError{fmt.Errorf("unknown image command %q (see '%s --help')", args[0], cmd.CommandPath())}
			}
			return cmd.Help()
		},
	}
	cmd.AddCommand(newImageKeygenCmd(), newImageBuildCmd(), newImageInspectCmd())
	return cmd
}

func newImageKeygenCmd() *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use:   "keygen --out PATH",
		Short: "Make an ed25519 key pair for signing images",
		Long: `keygen makes a new ed25519 key pair: the private key goes to PATH (PEM
PKCS#8 "PRIVATE KEY", mode 0600) and the public key to PATH.pub (PEM PKIX
"PUBLIC KEY", mode 0644). These are openssl's formats: 'openssl pkey -in
PATH -pubout' prints PATH.pub, and a key made with 'openssl genpkey
-algorithm ed25519' works with 'image build' too.

keygen never overwrites a key: it refuses when PATH or PATH.pub exists.
It prints the key id (the first 16 hex digits of the sha256 of the public
key, which manifests name) and both paths. Keep the private key off the
boards; give them PATH.pub.

Exit status: 0 done; 1 PATH or PATH.pub exists or cannot be written; 2 a
usage error.`,
		Example: `  boardlink image keygen --out signing.key
  boardlinkd --board sim --state-dir /tmp/board1 --trust-key signing.key.pub`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			if out == "" {
				return &usageError{fmt.Errorf("--out PATH is required (see '%s --help')", cmd.CommandPath())}
			}
			pub, priv, err := image.GenerateKey()
			if err != nil {
				return &exitError{code: 1, err: err}
			}
			if err := image.WriteKeyPair(out, pub, priv); err != nil {
				return &exitError{code: 1, err: err}
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintf(tw, "key id\t%s\n", image.KeyID(pub))
			fmt.Fprintf(tw, "private key\t%s\t(keep it secret: it signs images)\n", out)
			fmt.Fprintf(tw, "public key\t%s.pub\t(give it to boards: boardlinkd --trust-key %s.pub)\n", out, out)
			return tw.Flush()
		},
	}
	cmd.Flags().StringVarP(&out, "out", "o", "", "write the private key to PATH and the public key to PATH.pub (required)")
	return cmd
}

// imageBuildJSON is image build's JSON output.
type imageBuildJSON struct {
	Image    string         `json:"image"`
	Size     int64          `json:"size"`
	Manifest image.Manifest `json:"manifest"`
}

func newImageBuildCmd() *cobra.Command {
	var (
		keyPath, out, version, chunkSize string
		models                           []string
		asJSON                           bool
	)
	cmd := &cobra.Command{
		Use:   "build --key KEY --model M [--model M2]... --version V [--chunk-size SIZE] PAYLOAD -o IMAGE",
		Short: "Build a signed image of a payload",
		Long: `build makes the image IMAGE of the file PAYLOAD (the new slot contents,
e.g. a root file system image), signed with the private key KEY (from
'image keygen', or openssl's PEM PKCS#8 ed25519 key).

--model names a board model the image fits (repeatable; at least one): a
board whose model is none of them refuses the image. --version is the
payload's version: dot-separated numbers with an optional pre-release
suffix, e.g. 1.4.2 or 2.0.0-rc.1. --chunk-size is the unit in which boards
fetch, check and reuse the payload: a power of two from 4KiB to 64MiB,
default 1MiB; sizes take the suffixes KiB, MiB (or K, M) or none (bytes).
Smaller chunks let a board reuse more of the payload it already holds, at
the price of a longer manifest.

The payload is read twice (hashed, then copied), never held in memory.
IMAGE is written to a temporary file beside it and renamed into place
once complete and synced: it is never left half-written, and an existing
IMAGE is replaced only by a complete image. With SOURCE_DATE_EPOCH set
the build time is taken from it, so that the same inputs give the same
image, byte for byte.

build prints a summary: version, models, payload size and sha256, chunks
and key id; with --json, {"image", "size", "manifest"}.

Exit status: 0 built; 1 PAYLOAD or KEY cannot be read, or IMAGE cannot be
written; 2 a usage error, or an option the manifest refuses (a bad
version, model or chunk size, an empty payload).`,
		Example: `  boardlink image build --key signing.key --model imx8 --version 1.4.2 rootfs.ext4 -o update.img
  boardlink image build --key signing.key --model imx8 --model imx8mp --version 2.0.0-rc.1 \
      --chunk-size 256KiB rootfs.ext4 -o update-rc1.img --json`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			for _, f := range []struct{ flag, value string }{{"--key KEY", keyPath}, {"-o IMAGE", out}, {"--version V", version}} {
				if f.value == "" {
					return &usageError{fmt.Errorf("%s is required (see '%s --help')", f.flag, cmd.CommandPath())}
				}
			}
			if len(models) == 0 {
				return &usageError{fmt.Errorf("--model M is required: the board model(s) the image fits (see '%s --help')", cmd.CommandPath())}
			}
			if !image.ValidVersion(version) {
				return &usageError{fmt.Errorf("--version %q: want dot-separated numbers with an optional -suffix, e.g. 1.4.2 or 2.0.0-rc.1", version)}
			}
			chunk, err := units.ParseSize(chunkSize)
			if err != nil {
				return &usageError{fmt.Errorf("--chunk-size: %w", err)}
			}
			if !image.ValidChunkSize(chunk) {
				return &usageError{fmt.Errorf("--chunk-size %s: must be a power of two from 4KiB to 64MiB", chunkSize)}
			}
			opts := image.BuildOptions{Models: models, Version: version, ChunkSize: chunk}
			if sde := os.Getenv("SOURCE_DATE_EPOCH"); sde != "" {
				sec, err := strconv.ParseInt(sde, 10, 64)
				if err != nil || sec <= 0 {
					return &usageError{fmt.Errorf("SOURCE_DATE_EPOCH=%q: want seconds since 1970", sde)}
				}
				opts.Created = time.Unix(sec, 0)
			}
			if opts.Key, err = image.LoadPrivateKey(keyPath); err != nil {
				return &exitError{code: 1, err: fmt.Errorf("--key: %w", err)}
			}
			m, err := image.BuildFile(out, args[0], opts)
			if errors.Is(err, image.ErrFormat) {
				return &usageError{err}
			}
			if err != nil {
				return &exitError{code: 1, err: err}
			}
			st, err := os.Stat(out)
			if err != nil {
				return &exitError{code: 1, err: err}
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), imageBuildJSON{Image: out, Size: st.Size(), Manifest: m})
			}
			fmt.Fprintf(cmd.OutOrStdout(), "built %s (%s)\n", out, humanBytes(st.Size()))
			printManifest(cmd.OutOrStdout(), m)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVarP(&keyPath, "key", "k", "", "the private key that signs the image (required)")
	f.StringArrayVarP(&models, "model", "m", nil, "a board model the image fits (repeatable; at least one)")
	f.StringVar(&version, "version", "", "the payload's version, e.g. 1.4.2 (required)")
	f.StringVar(&chunkSize, "chunk-size", "1MiB", "chunk size, a power of two from 4KiB to 64MiB")
	f.StringVarP(&out, "output", "o", "", "the image file to write (required)")
	f.BoolVar(&asJSON, "json", false, "print the image's manifest as JSON")
	return cmd
}

// imageInspectJSON is image inspect's JSON output. SignatureOK and
// PayloadOK are there only when --verify-with asked for the checks.
type imageInspectJSON struct {
	Image          string         `json:"image"`
	Size           int64          `json:"size"`
	Manifest       image.Manifest `json:"manifest"`
	PayloadOffset  int64          `json:"payload_offset"`
	SignatureOK    *bool          `json:"signature_ok,omitempty"`
	SignatureError string         `json:"signature_error,omitempty"`
	PayloadOK      *bool          `json:"payload_ok,omitempty"`
	PayloadError   string         `json:"payload_error,omitempty"`
}

func newImageInspectCmd() *cobra.Command {
	var (
		keyPaths []string
		asJSON   bool
		chunks   bool
	)
	cmd := &cobra.Command{
		Use:   "inspect IMAGE [--verify-with PUB]... [--chunks] [--json]",
		Short: "Show an image's manifest, and check its signature and payload",
		Long: `inspect opens the image IMAGE and prints its manifest: the board models it
fits, version, payload size and sha256, chunks, build time and the id of
the key that signed it, and where the payload lies in the file (its
offset: chunk i is a byte range of the file, for HTTP Range requests).
Opening checks the archive's layout and the manifest, and refuses a
truncated file; it does not read the payload.

With --verify-with PUB (a public key file; repeatable: any of them may
have signed), inspect also checks what a board checks: the signature of
the manifest by one of the keys, then every chunk and the whole payload
against the manifest, and names the first chunk that does not match.

--chunks lists every chunk: index, offset in the file, size and sha256.
--json prints one object: {"image", "size", "manifest", "payload_offset"},
and with --verify-with "signature_ok" and "payload_ok" (true or false)
and "signature_error" and "payload_error" when they fail.

Exit status: 0 a valid image (and, with --verify-with, signed by one of
the keys with an intact payload); 1 not an image, a truncated or
malformed one, a bad signature or a payload that does not match, or a
file that cannot be read; 2 a usage error.`,
		Example: `  boardlink image inspect update.img
  boardlink image inspect update.img --verify-with signing.key.pub
  boardlink image inspect update.img --json | jq .manifest.version`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var keys []ed25519.PublicKey
			for _, p := range keyPaths {
				k, err := image.LoadPublicKey(p)
				if err != nil {
					return &exitError{code: 1, err: fmt.Errorf("--verify-with: %w", err)}
				}
				keys = append(keys, k)
			}
			im, err := image.OpenFile(args[0])
			if err != nil {
				return &exitError{code: 1, err: err}
			}
			defer im.Close()
			rep := imageInspectJSON{Image: args[0], Size: im.Size(), Manifest: im.Manifest, PayloadOffset: im.PayloadOffset()}
			var sigErr, payErr error
			if len(keys) > 0 {
				sigErr, payErr = im.Verify(keys), im.VerifyPayload()
				sigOK, payOK := sigErr == nil, payErr == nil
				rep.SignatureOK, rep.PayloadOK = &sigOK, &payOK
				if sigErr != nil {
					rep.SignatureError = sigErr.Error()
				}
				if payErr != nil {
					rep.PayloadError = payErr.Error()
				}
			}
			w := cmd.OutOrStdout()
			if asJSON {
				if err := writeJSON(w, rep); err != nil {
					return err
				}
			} else {
				printInspect(w, im, rep, len(keys) > 0)
				if chunks {
					printChunks(w, im)
				}
			}
			if err := errors.Join(sigErr, payErr); err != nil {
				return &exitError{code: 1, err: fmt.Errorf("%s: %w", args[0], err)}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&keyPaths, "verify-with", nil, "check the signature with this public key (repeatable) and every chunk")
	f.BoolVar(&chunks, "chunks", false, "list every chunk: index, offset in the file, size, sha256")
	f.BoolVar(&asJSON, "json", false, "print the manifest and the checks as one JSON object")
	return cmd
}

// printManifest prints a manifest's fields, one per line.
func printManifest(w io.Writer, m image.Manifest) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	manifestRows(tw, m)
	tw.Flush()
}

func manifestRows(tw io.Writer, m image.Manifest) {
	fmt.Fprintf(tw, "version\t%s\n", m.Version)
	fmt.Fprintf(tw, "models\t%s\n", strings.Join(m.Models, ", "))
	fmt.Fprintf(tw, "payload\t%s, sha256 %s\n", humanBytes(m.PayloadSize), m.PayloadSHA256)
	chunks := fmt.Sprintf("%d of %s", len(m.Chunks), units.FormatSize(m.ChunkSize))
	if _, last := m.ChunkRange(len(m.Chunks) - 1); last != m.ChunkSize {
		chunks += fmt.Sprintf(" (the last %s)", humanBytes(last))
	}
	fmt.Fprintf(tw, "chunks\t%s\n", chunks)
	fmt.Fprintf(tw, "created\t%s\n", m.Created.UTC().Format(time.RFC3339))
	fmt.Fprintf(tw, "key id\t%s\n", m.KeyID)
}

func printInspect(w io.Writer, im *image.Image, rep imageInspectJSON, checked bool) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "image\t%s (%s, format %d, payload at offset %d)\n", rep.Image, humanBytes(rep.Size), im.Manifest.Format, rep.PayloadOffset)
	manifestRows(tw, im.Manifest)
	switch {
	case !checked:
		fmt.Fprintf(tw, "signature\tnot checked (--verify-with KEY.pub)\n")
	case *rep.SignatureOK:
		fmt.Fprintf(tw, "signature\tok, key %s\n", im.Manifest.KeyID)
	default:
		fmt.Fprintf(tw, "signature\tBAD: %s\n", rep.SignatureError)
	}
	switch {
	case !checked:
	case *rep.PayloadOK:
		fmt.Fprintf(tw, "payload check\tok, %d chunks and the whole payload\n", len(im.Manifest.Chunks))
	default:
		fmt.Fprintf(tw, "payload check\tBAD: %s\n", rep.PayloadError)
	}
	tw.Flush()
}

func printChunks(w io.Writer, im *image.Image) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "chunk\toffset\tsize\t sha256\n")
	for i, sum := range im.Manifest.Chunks {
		off, n := im.Manifest.ChunkRange(i)
		fmt.Fprintf(tw, "%d\t%d\t%d\t %s\n", i, im.PayloadOffset()+off, n, sum)
	}
	tw.Flush()
}
