package index

import (
	"bytes"
	"strings"
	"testing"
)

// TestFrameValue: a blob value round-trips, and a flipped bit, a wrong
// checksum or a wrong length is refused, never returned as a frame.
func TestFrameValue(t *testing.T) {
	frame := bytes.Repeat([]byte("ckptfs!"), PageSize/7+1)[:PageSize]
	v := appendFrameValue(nil, frame)
	if len(v) != frameValueLen {
		t.Fatalf("value of %d bytes, want %d", len(v), frameValueLen)
	}
	got, err := decodeFrameValue(v)
	if err != nil || !bytes.Equal(got, frame) {
		t.Fatalf("round trip: err %v, equal %v", err, bytes.Equal(got, frame))
	}
	for name, tc := range map[string]struct {
		bad  func([]byte) []byte
		want string
	}{
		"frame bit":    {func(b []byte) []byte { b[checksumLen+100] ^= 1; return b }, "checksum mismatch"},
		"checksum bit": {func(b []byte) []byte { b[3] ^= 0x80; return b }, "checksum mismatch"},
		"short":        {func(b []byte) []byte { return b[:len(b)-1] }, "has 4103 bytes"},
		"long":         {func(b []byte) []byte { return append(b, 0) }, "has 4105 bytes"},
		"empty":        {func(b []byte) []byte { return nil }, "has 0 bytes"},
	} {
		got, err := decodeFrameValue(tc.bad(bytes.Clone(v)))
		if err == nil || !strings.Contains(err.Error(), tc.want) || got != nil {
			t.Errorf("%s: got %d bytes, err %v; want error %q", name, len(got), err, tc.want)
		}
	}
}

// TestPackValue: a pack chunk keeps its frames in slot order; a corrupt
// slot fails alone, and a value that is not whole frames is refused.
func TestPackValue(t *testing.T) {
	frames := make([]byte, 3*PageSize)
	for i := range frames {
		frames[i] = byte(i / PageSize * 7)
	}
	v := appendPackValue(nil, frames)
	pv, err := decodePackValue(v)
	if err != nil || pv.frames() != 3 {
		t.Fatalf("decode: %d frames, err %v", pv.frames(), err)
	}
	for s := 0; s < 3; s++ {
		f, err := pv.frame(s)
		if err != nil || !bytes.Equal(f, frames[s*PageSize:(s+1)*PageSize]) {
			t.Fatalf("slot %d: err %v", s, err)
		}
	}
	if _, err := pv.frame(3); err == nil {
		t.Error("slot 3 of 3 was served")
	}
	bad := bytes.Clone(v)
	bad[3*checksumLen+PageSize+17] ^= 0x10 // a byte of slot 1
	pv, err = decodePackValue(bad)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pv.frame(0); err != nil {
		t.Errorf("slot 0 beside a corrupt slot: %v", err)
	}
	if _, err := pv.frame(1); err == nil || !strings.Contains(err.Error(), "checksum mismatch in slot 1") {
		t.Errorf("corrupt slot 1: %v", err)
	}
	for _, n := range []int{0, frameValueLen - 1, frameValueLen + 1, (packFrames + 1) * frameValueLen} {
		if _, err := decodePackValue(make([]byte, n)); err == nil {
			t.Errorf("value of %d bytes accepted", n)
		}
	}
}
