package rawfmt

import (
	"bytes"
	"context"
	"fmt"
	"testing"

	"github.com/RoaringBitmap/roaring/v2"
)

func TestParseList(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []uint32
		bad  bool
	}{
		{in: "", want: nil},
		{in: "\n", want: nil},
		{in: "0-3,7,9-10\n", want: []uint32{0, 1, 2, 3, 7, 9, 10}},
		{in: "5", want: []uint32{5}},
		{in: "3-1", bad: true},
		{in: "1,,2", bad: true},
		{in: "-1", bad: true},
		{in: "1-", bad: true},
		{in: " 1", bad: true},
		{in: "1,2,x", bad: true},
		{in: "100", bad: true}, // beyond the limit
		{in: "99999999999999999999999", bad: true},
	} {
		got, err := ParseList([]byte(tc.in), 100)
		if tc.bad {
			if err == nil {
				t.Errorf("%q: accepted", tc.in)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tc.in, err)
			continue
		}
		if !got.Equals(roaring.BitmapOf(tc.want...)) {
			t.Errorf("%q: got %v want %v", tc.in, got.ToArray(), tc.want)
		}
	}
	if s := FormatList(roaring.BitmapOf(0, 1, 2, 3, 7, 9, 10)); s != "0-3,7,9-10\n" {
		t.Errorf("FormatList = %q", s)
	}
	if s := FormatList(roaring.New()); s != "\n" {
		t.Errorf("FormatList(empty) = %q", s)
	}
	// EachRun stops when told to, also across NextMany batches.
	bm := roaring.New()
	bm.AddRange(0, 5000)
	bm.Add(6000)
	bm.AddRange(7000, 7002)
	var runs [][2]uint64
	EachRun(bm, func(start, end uint64) bool {
		runs = append(runs, [2]uint64{start, end})
		return len(runs) < 2
	})
	if fmt.Sprint(runs) != "[[0 5000] [6000 6001]]" {
		t.Errorf("EachRun stopped after two runs: %v", runs)
	}
}

// TestParseListEchoesLittle: an error quotes at most a short prefix of a
// bad item, however large the item (a 50 MB item made a 50 MB message).
func TestParseListEchoesLittle(t *testing.T) {
	huge := bytes.Repeat([]byte("x"), 1<<20)
	for _, in := range [][]byte{huge, append([]byte("1,"), huge...), append([]byte("1-"), huge...), append(append([]byte("9"), huge...), "-1"...)} {
		_, err := ParseList(in, 100)
		if err == nil || len(err.Error()) > 200 {
			t.Fatalf("error of %d bytes for a %d-byte list: %.300v", len(fmt.Sprint(err)), len(in), err)
		}
	}
	_, err := ParseList([]byte("5-3"), 100)
	if err == nil || !bytes.Contains([]byte(err.Error()), []byte(`"5-3"`)) {
		t.Fatalf("short item not quoted whole: %v", err)
	}
}

// FuzzParseList checks that every accepted list round-trips through
// FormatList and that nothing panics.
func FuzzParseList(f *testing.F) {
	for _, s := range []string{"", "\n", "0-511,1024,2048-4095\n", "1", "3-1", "1,,2", "4294967295", "0-0,0-0"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		bm, err := ParseList(data, 1<<32)
		if err != nil {
			return
		}
		again, err := ParseList([]byte(FormatList(bm)), 1<<32)
		if err != nil || !again.Equals(bm) {
			t.Fatalf("round trip of %q failed: %v", data, err)
		}
	})
}

// FuzzReadDump checks that ReadDump yields exactly the input's frames, in
// order, or rejects input that is not a whole number of frames.
func FuzzReadDump(f *testing.F) {
	f.Add([]byte{}, uint8(1))
	f.Add(make([]byte, PageSize), uint8(1))
	f.Add(make([]byte, PageSize+1), uint8(2))
	f.Add(bytes.Repeat([]byte{1, 2, 3}, PageSize), uint8(1))
	f.Fuzz(func(t *testing.T, data []byte, bufPages uint8) {
		buf := make([]byte, (int(bufPages%4)+1)*PageSize)
		var got []byte
		next := uint64(0)
		n, err := ReadDump(context.Background(), bytes.NewReader(data), buf, func(pfn uint64, frame []byte) error {
			if pfn != next {
				t.Fatalf("pfn %d, want %d", pfn, next)
			}
			next++
			got = append(got, frame...)
			return nil
		}, nil)
		if len(data)%PageSize != 0 {
			if err == nil {
				t.Fatalf("%d bytes accepted", len(data))
			}
			return
		}
		if err != nil || n != uint64(len(data)) || !bytes.Equal(got, data) {
			t.Fatalf("ReadDump of %d bytes: n=%d err=%v", len(data), n, err)
		}
	})
}
