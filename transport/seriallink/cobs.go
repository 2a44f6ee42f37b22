package seriallink

import "errors"

// errCOBS reports an encoding that cannot come from cobsEncode. The parser
// treats it like a CRC failure.
var errCOBS = errors.New("seriallink: bad COBS encoding")

// cobsMaxLen is the longest encoding of n bytes: one code byte per started
// run of 254 bytes.
func cobsMaxLen(n int) int { return n + n/254 + 1 }

// cobsEncode appends the COBS encoding of src to dst. The output never
// contains 0x00, so 0x00 can delimit frames on the line.
func cobsEncode(dst, src []byte) []byte {
	codeAt := len(dst)
	dst = append(dst, 0)
	code := byte(1)
	for _, b := range src {
		if b != 0 {
			dst = append(dst, b)
			code++
		}
		if b == 0 || code == 0xFF {
			dst[codeAt] = code
			codeAt = len(dst)
			dst = append(dst, 0)
			code = 1
		}
	}
	dst[codeAt] = code
	return dst
}

// cobsDecode appends the decoding of src to dst. It rejects a zero byte and
// a code that runs past the end, and never panics.
func cobsDecode(dst, src []byte) ([]byte, error) {
	for i := 0; i < len(src); {
		code := int(src[i])
		if code == 0 {
			return dst, errCOBS
		}
		i++
		end := i + code - 1
		if end > len(src) {
			return dst, errCOBS
		}
		for _, b := range src[i:end] {
			if b == 0 {
				return dst, errCOBS
			}
		}
		dst = append(dst, src[i:end]...)
		i = end
		// A short run stands for "data, then a zero", except at the very end.
		if code != 0xFF && i < len(src) {
			dst = append(dst, 0)
		}
	}
	return dst, nil
}
