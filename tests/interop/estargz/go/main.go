// Command esgzref drives the Debian-packaged stargz-snapshotter estargz library (the reference) for the
// project's interop tests and benchmark.
//
//	esgzref convert [-level N] [-chunk N] [-zstd] [-prio a,b] IN OUT   -> JSON result on stdout
//	esgzref toc BLOB                                                  -> raw TOC JSON on stdout
//	esgzref verify BLOB TOCDIGEST [ORIGINAL_TAR [DIFFID [SIZE]]]      -> exit 0 when all checks pass
//	esgzref headers < JSON                                            -> tar.Writer header bytes (hex)
//	esgzref tarsplit TARSPLIT_JSON ORIGINAL_TAR                       -> reassemble with vbatts/tar-split
package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/containerd/stargz-snapshotter/estargz/zstdchunked"
	"github.com/klauspost/compress/zstd"
	digest "github.com/opencontainers/go-digest"
	"github.com/vbatts/tar-split/tar/asm"
	"github.com/vbatts/tar-split/tar/storage"
)

var failures int

func fail(format string, args ...interface{}) {
	failures++
	fmt.Printf("FAIL: "+format+"\n", args...)
}

func die(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "error: "+format+"\n", args...)
	os.Exit(2)
}

func main() {
	if len(os.Args) < 2 {
		die("usage: esgzref convert|toc|verify ...")
	}
	switch os.Args[1] {
	case "convert":
		convert(os.Args[2:])
	case "toc":
		if len(os.Args) != 3 {
			die("usage: esgzref toc BLOB")
		}
		raw, _, err := rawTOC(openSection(os.Args[2]))
		if err != nil {
			die("%v", err)
		}
		os.Stdout.Write(raw)
	case "verify":
		verify(os.Args[2:])
	case "headers":
		headers()
	case "tarsplit":
		if len(os.Args) != 4 {
			die("usage: esgzref tarsplit TARSPLIT_JSON ORIGINAL_TAR")
		}
		tarsplitReassemble(os.Args[2], os.Args[3])
	default:
		die("unknown mode %q", os.Args[1])
	}
}

func openSection(p string) *io.SectionReader {
	f, err := os.Open(p)
	if err != nil {
		die("%v", err)
	}
	st, err := f.Stat()
	if err != nil {
		die("%v", err)
	}
	return io.NewSectionReader(f, 0, st.Size())
}

func convert(args []string) {
	fs := flag.NewFlagSet("convert", flag.ExitOnError)
	level := fs.Int("level", 9, "gzip level")
	chunk := fs.Int("chunk", 0, "chunk size")
	useZstd := fs.Bool("zstd", false, "zstd:chunked (stargz flavour)")
	prio := fs.String("prio", "", "comma-separated prioritized files")
	fs.Parse(args)
	if fs.NArg() != 2 {
		die("usage: esgzref convert [flags] IN OUT")
	}
	start := time.Now()
	opts := []estargz.Option{estargz.WithChunkSize(*chunk), estargz.WithCompressionLevel(*level)}
	if *prio != "" {
		opts = append(opts, estargz.WithPrioritizedFiles(strings.Split(*prio, ",")))
	}
	meta := map[string]string{}
	if *useZstd {
		opts = append(opts, estargz.WithCompression(zstdCompression{
			&zstdchunked.Compressor{CompressionLevel: zstd.SpeedDefault, Metadata: meta},
			&zstdchunked.Decompressor{}}))
	}
	blob, err := estargz.Build(openSection(fs.Arg(0)), opts...)
	if err != nil {
		die("build: %v", err)
	}
	out, err := os.Create(fs.Arg(1))
	if err != nil {
		die("%v", err)
	}
	n, err := io.Copy(out, blob)
	if err != nil {
		die("write: %v", err)
	}
	if err := blob.Close(); err != nil {
		die("close: %v", err)
	}
	if err := out.Close(); err != nil {
		die("%v", err)
	}
	res := map[string]interface{}{
		"toc_digest": blob.TOCDigest().String(), "diff_id": blob.DiffID().String(),
		"compressed_size": n, "seconds": time.Since(start).Seconds(), "annotations": meta,
		"gomaxprocs": runtime.GOMAXPROCS(0),
	}
	json.NewEncoder(os.Stdout).Encode(res)
}

// rawTOC returns the TOC JSON bytes as stored, and whether the blob is zstd.
func rawTOC(sr *io.SectionReader) ([]byte, bool, error) {
	size := sr.Size()
	if size >= 48 {
		tail := make([]byte, 48)
		if _, err := sr.ReadAt(tail, size-48); err == nil && bytes.Equal(tail[40:], []byte("GnUlInUx")) {
			off := int64(binary.LittleEndian.Uint64(tail[8:]))
			clen := int64(binary.LittleEndian.Uint64(tail[16:]))
			dec, err := zstd.NewReader(io.NewSectionReader(sr, off, clen))
			if err != nil {
				return nil, true, err
			}
			defer dec.Close()
			b, err := io.ReadAll(dec)
			return b, true, err
		}
	}
	tocOff, _, err := estargz.OpenFooter(sr)
	if err != nil {
		return nil, false, err
	}
	zr, err := gzip.NewReader(io.NewSectionReader(sr, tocOff, size-tocOff))
	if err != nil {
		return nil, false, err
	}
	zr.Multistream(false)
	tr := tar.NewReader(zr)
	h, err := tr.Next()
	if err != nil {
		return nil, false, err
	}
	if h.Name != estargz.TOCTarName {
		return nil, false, fmt.Errorf("first TOC member entry is %q", h.Name)
	}
	b, err := io.ReadAll(tr)
	return b, false, err
}

type origEntry struct {
	hdr    *tar.Header
	digest string
}

func decompressed(p string) io.Reader {
	f, err := os.Open(p)
	if err != nil {
		die("%v", err)
	}
	br := bufio.NewReaderSize(f, 1<<20)
	magic, _ := br.Peek(4)
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b, 0x08}):
		zr, err := gzip.NewReader(br)
		if err != nil {
			die("%v", err)
		}
		return zr
	case bytes.Equal(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		zr, err := zstd.NewReader(br)
		if err != nil {
			die("%v", err)
		}
		return zr
	}
	return br
}

func cleanName(n string) string { return strings.TrimPrefix(path.Clean("/"+n), "/") }

func sha(r io.Reader) string {
	h := sha256.New()
	// A large buffer: each ReadAt on an estargz file decompresses from the start of its chunk.
	if _, err := io.CopyBuffer(h, r, make([]byte, 4<<20)); err != nil {
		return "read error: " + err.Error()
	}
	return fmt.Sprintf("sha256:%x", h.Sum(nil))
}

func typeName(flag byte) string {
	switch flag {
	case tar.TypeReg, tar.TypeRegA:
		return "reg"
	case tar.TypeLink:
		return "hardlink"
	case tar.TypeSymlink:
		return "symlink"
	case tar.TypeDir:
		return "dir"
	case tar.TypeChar:
		return "char"
	case tar.TypeBlock:
		return "block"
	case tar.TypeFifo:
		return "fifo"
	}
	return fmt.Sprintf("type-%c", flag)
}

func xattrsOf(h *tar.Header) map[string]string {
	out := map[string]string{}
	for k, v := range h.PAXRecords {
		if strings.HasPrefix(k, "SCHILY.xattr.") {
			out[k[len("SCHILY.xattr."):]] = v
		}
	}
	return out
}

func modtime(t time.Time) string {
	if t.IsZero() || t.Unix() == 0 {
		return ""
	}
	return t.UTC().Round(time.Second).Format(time.RFC3339)
}

// compareMeta checks the TOC entry e against a tar header h, both describing the same path.
func compareMeta(where string, e *estargz.TOCEntry, h *tar.Header) {
	if e.Type != typeName(h.Typeflag) {
		fail("%s %s: type %s != %s", where, h.Name, e.Type, typeName(h.Typeflag))
		return
	}
	if e.Mode&07777 != h.Mode&07777 {
		fail("%s %s: mode %o != %o", where, h.Name, e.Mode, h.Mode)
	} else if e.Mode != h.Mode {
		fmt.Printf("WARN: %s %s: mode type bits %o != %o\n", where, h.Name, e.Mode, h.Mode)
	}
	if e.UID != h.Uid || e.GID != h.Gid {
		fail("%s %s: owner %d:%d != %d:%d", where, h.Name, e.UID, e.GID, h.Uid, h.Gid)
	}
	if e.Type == "reg" && e.Size != h.Size {
		fail("%s %s: size %d != %d", where, h.Name, e.Size, h.Size)
	}
	if (e.Type == "symlink" || e.Type == "hardlink") && cleanName(e.LinkName) != cleanName(h.Linkname) {
		fail("%s %s: link %q != %q", where, h.Name, e.LinkName, h.Linkname)
	}
	if (e.Type == "char" || e.Type == "block") && (int64(e.DevMajor) != h.Devmajor || int64(e.DevMinor) != h.Devminor) {
		fail("%s %s: device %d,%d != %d,%d", where, h.Name, e.DevMajor, e.DevMinor, h.Devmajor, h.Devminor)
	}
	if e.ModTime3339 != modtime(h.ModTime) {
		fail("%s %s: modtime %q != %q", where, h.Name, e.ModTime3339, modtime(h.ModTime))
	}
	want := xattrsOf(h)
	if len(want) != len(e.Xattrs) {
		fail("%s %s: %d xattrs != %d", where, h.Name, len(e.Xattrs), len(want))
	}
	for k, v := range want {
		if got, ok := e.Xattrs[k]; !ok || string(got) != v {
			fail("%s %s: xattr %q differs", where, h.Name, k)
		}
	}
}

func verify(args []string) {
	if len(args) < 2 {
		die("usage: esgzref verify BLOB TOCDIGEST [ORIGINAL [DIFFID [SIZE]]]")
	}
	sr := openSection(args[0])
	tocDigest, err := digest.Parse(args[1])
	if err != nil {
		die("toc digest: %v", err)
	}
	// 1. Open with every decompressor stargz-snapshotter uses.
	r, err := estargz.Open(sr, estargz.WithDecompressors(new(zstdchunked.Decompressor)))
	if err != nil {
		fail("estargz.Open: %v", err)
		fmt.Printf("RESULT failures=%d\n", failures)
		os.Exit(1)
	}
	// 2. VerifyTOC.
	verifiers, err := r.VerifyTOC(tocDigest)
	if err != nil {
		fail("VerifyTOC: %v", err)
		fmt.Printf("RESULT failures=%d\n", failures)
		os.Exit(1)
	}
	// 3. TOC structure, from the raw JSON.
	raw, isZstd, err := rawTOC(sr)
	if err != nil {
		die("raw toc: %v", err)
	}
	var toc estargz.JTOC
	if err := json.Unmarshal(raw, &toc); err != nil {
		die("toc json: %v", err)
	}
	if toc.Version != 1 {
		fail("TOC version %d", toc.Version)
	}
	tocOffset := sr.Size()
	if off, _, err := estargz.OpenFooter(sr); err == nil && !isZstd {
		tocOffset = off
	}
	byName := map[string]*estargz.TOCEntry{}
	landmarks := 0
	chunks, chunkBytes := 0, int64(0)
	var cur *estargz.TOCEntry
	var next int64
	for _, e := range toc.Entries {
		switch e.Type {
		case "dir", "reg", "symlink", "hardlink", "char", "block", "fifo":
		case "chunk":
			if cur == nil || e.ChunkOffset != next {
				fail("chunk of %s at %d not contiguous", e.Name, e.ChunkOffset)
			}
		default:
			fail("%s: bad type %q", e.Name, e.Type)
		}
		if e.Type != "chunk" {
			if cur != nil && next != cur.Size {
				fail("%s: chunks cover %d of %d bytes", cur.Name, next, cur.Size)
			}
			cur, next = nil, 0
			n := cleanName(e.Name)
			if _, dup := byName[n]; dup {
				fail("duplicate TOC name %s", n)
			}
			byName[n] = e
			if n == ".prefetch.landmark" || n == ".no.prefetch.landmark" {
				landmarks++
			}
			if e.Type != "reg" || e.Size == 0 {
				continue
			}
			cur = e
		}
		if cur == nil {
			fail("chunk %s without a reg", e.Name)
			continue
		}
		size := e.ChunkSize
		if size == 0 {
			size = cur.Size - e.ChunkOffset
		}
		if e.Offset <= 0 && !(e.Offset == 0 && isZstd) || e.Offset >= tocOffset {
			fail("%s: chunk offset %d outside the payload area", e.Name, e.Offset)
		}
		chunkEnt, ok := r.ChunkEntryForOffset(cleanName(cur.Name), e.ChunkOffset)
		if !ok {
			fail("%s: no chunk entry at %d", cur.Name, e.ChunkOffset)
		} else {
			v, err := verifiers.Verifier(chunkEnt)
			if err != nil {
				fail("%s: verifier: %v", cur.Name, err)
			} else {
				fr, err := r.OpenFile(cleanName(cur.Name))
				if err != nil {
					fail("%s: open: %v", cur.Name, err)
				} else if _, err := io.CopyBuffer(v, io.NewSectionReader(fr, e.ChunkOffset, size), make([]byte, size+1)); err != nil || !v.Verified() {
					fail("%s: chunk at %d does not match chunkDigest (%v)", cur.Name, e.ChunkOffset, err)
				}
			}
		}
		chunks++
		chunkBytes += size
		next = e.ChunkOffset + size
	}
	if cur != nil && next != cur.Size {
		fail("%s: chunks cover %d of %d bytes", cur.Name, next, cur.Size)
	}
	if landmarks != 1 {
		fail("%d landmarks", landmarks)
	}
	// Whole-file digests and the reader tree.
	for n, e := range byName {
		got, ok := r.Lookup(n)
		if !ok {
			fail("%s not reachable through the reader", n)
			continue
		}
		if e.Type == "reg" {
			fr, err := r.OpenFile(n)
			if err != nil {
				fail("%s: open: %v", n, err)
				continue
			}
			if d := sha(io.NewSectionReader(fr, 0, got.Size)); d != e.Digest {
				fail("%s: digest %s != %s", n, d, e.Digest)
			}
			if (n == ".prefetch.landmark" || n == ".no.prefetch.landmark") && (e.Size != 1 || e.Digest != digest.FromBytes([]byte{0x0f}).String()) {
				fail("%s: landmark is not one 0x0f byte", n)
			}
		}
	}
	// 5. The plain stream.
	var plain io.Reader
	if isZstd {
		zr, err := zstd.NewReader(io.NewSectionReader(sr, 0, sr.Size()))
		if err != nil {
			die("%v", err)
		}
		plain = zr
	} else {
		zr, err := gzip.NewReader(io.NewSectionReader(sr, 0, sr.Size()))
		if err != nil {
			die("%v", err)
		}
		plain = zr
	}
	streamHash := sha256.New()
	counter := &countingWriter{}
	tr := tar.NewReader(io.TeeReader(plain, io.MultiWriter(streamHash, counter)))
	entries, sawTOC := 0, false
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			fail("plain stream: %v", err)
			break
		}
		if sawTOC {
			fail("entry %s after the TOC entry", h.Name)
		}
		if h.Name == estargz.TOCTarName && !isZstd {
			sawTOC = true
			continue
		}
		entries++
		e, ok := byName[cleanName(h.Name)]
		if !ok {
			fail("plain stream entry %s not in the TOC", h.Name)
			io.Copy(io.Discard, tr)
			continue
		}
		compareMeta("stream", e, h)
		if d := sha(tr); e.Type == "reg" && d != e.Digest {
			fail("stream %s: content %s != %s", h.Name, d, e.Digest)
		}
	}
	io.Copy(io.Discard, plain)
	if !sawTOC && !isZstd {
		fail("no %s entry at the end of the stream", estargz.TOCTarName)
	}
	if entries != len(byName) {
		fail("stream has %d entries, TOC %d", entries, len(byName))
	}
	diffID := fmt.Sprintf("sha256:%x", streamHash.Sum(nil))
	if len(args) > 3 && args[3] != "" && args[3] != diffID {
		fail("diff_id %s != expected %s", diffID, args[3])
	}
	if len(args) > 4 && args[4] != fmt.Sprint(counter.n) {
		fail("uncompressed size %d != expected %s", counter.n, args[4])
	}
	// 6. Against the original tar.
	if len(args) > 2 && args[2] != "" {
		orig := map[string]origEntry{}
		otr := tar.NewReader(decompressed(args[2]))
		for {
			h, err := otr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				die("original: %v", err)
			}
			n := cleanName(h.Name)
			if n == ".prefetch.landmark" || n == ".no.prefetch.landmark" || n == estargz.TOCTarName {
				continue
			}
			orig[n] = origEntry{h, sha(otr)}
		}
		names := make([]string, 0, len(orig))
		for n := range orig {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			o := orig[n]
			e, ok := byName[n]
			if !ok {
				fail("original entry %s missing from the TOC", n)
				continue
			}
			compareMeta("original", e, o.hdr)
			if e.Type == "reg" && e.Digest != o.digest {
				fail("original %s: content %s != %s", n, o.digest, e.Digest)
			}
		}
		for n := range byName {
			if _, ok := orig[n]; !ok && n != ".prefetch.landmark" && n != ".no.prefetch.landmark" {
				fail("TOC entry %s not in the original", n)
			}
		}
	}
	fmt.Printf("RESULT failures=%d chunks=%d chunk_bytes=%d entries=%d diff_id=%s size=%d\n",
		failures, chunks, chunkBytes, entries, diffID, counter.n)
	if failures > 0 {
		os.Exit(1)
	}
}

// headers reads a JSON list of headers on stdin and prints, for each, the hex of the bytes that
// tar.Writer.WriteHeader emits (or "error: ...").
func headers() {
	var in []struct {
		Name, Linkname, Uname, Gname   string
		Typeflag                       string
		Size, Mode, Devmajor, Devminor int64
		UID, GID                       int
		MtimeNs, AtimeNs, CtimeNs      *int64
		PAXRecords                     map[string]string
		Format                         int
	}
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		die("%v", err)
	}
	toTime := func(ns *int64) time.Time {
		if ns == nil {
			return time.Time{}
		}
		return time.Unix(0, *ns)
	}
	out := []string{}
	for _, h := range in {
		hdr := &tar.Header{
			Name: h.Name, Linkname: h.Linkname, Uname: h.Uname, Gname: h.Gname, Typeflag: h.Typeflag[0],
			Size: h.Size, Mode: h.Mode, Devmajor: h.Devmajor, Devminor: h.Devminor, Uid: h.UID, Gid: h.GID,
			ModTime: toTime(h.MtimeNs), AccessTime: toTime(h.AtimeNs), ChangeTime: toTime(h.CtimeNs),
			PAXRecords: h.PAXRecords, Format: tar.Format(h.Format),
		}
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		if err := tw.WriteHeader(hdr); err != nil {
			out = append(out, "error: "+err.Error())
			continue
		}
		out = append(out, fmt.Sprintf("%x", buf.Bytes()))
	}
	json.NewEncoder(os.Stdout).Encode(out)
}

// tarsplitReassemble rebuilds a tar from tar-split metadata with the vbatts/tar-split library (which
// checks every file's CRC-64) and the file contents of the original tar, and compares it with the original.
func tarsplitReassemble(metaPath, origPath string) {
	orig, err := os.ReadFile(origPath)
	if err != nil {
		die("%v", err)
	}
	files := storage.NewBufferFileGetPutter()
	tr := tar.NewReader(bytes.NewReader(orig))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			die("original: %v", err)
		}
		if _, _, err := files.Put(h.Name, tr); err != nil {
			die("%v", err)
		}
	}
	meta, err := os.Open(metaPath)
	if err != nil {
		die("%v", err)
	}
	var out bytes.Buffer
	if err := asm.WriteOutputTarStream(files, storage.NewJSONUnpacker(meta), &out); err != nil {
		fail("tar-split reassembly: %v", err)
	} else if !bytes.Equal(out.Bytes(), orig) {
		fail("reassembled %d bytes differ from the original %d bytes", out.Len(), len(orig))
	}
	fmt.Printf("RESULT failures=%d size=%d\n", failures, out.Len())
	if failures > 0 {
		os.Exit(1)
	}
}

type zstdCompression struct {
	*zstdchunked.Compressor
	*zstdchunked.Decompressor
}

type countingWriter struct{ n int64 }

func (c *countingWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }
