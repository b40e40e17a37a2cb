package index

import "testing"

// TestKeyWords: messages about stored records (verify's above all) name
// them as a user knows them, never by their one-letter key kind.
func TestKeyWords(t *testing.T) {
	name := func(id RunID) string {
		if id == 7 {
			return "r1"
		}
		return ""
	}
	for _, tc := range []struct{ got, want string }{
		{keyWords(appendBlobKey(nil, 7, 3, 17), name), "frames of run r1, checkpoint 3"},
		{keyWords(appendVersionKey(nil, 7, 17, 3), name), "frame versions of run r1, checkpoint 3"},
		{keyWords(appendPackKey(nil, 7, 3, 0), name), "working-set pack of run r1, checkpoint 3"},
		{keyWords(appendIntervalKey(nil, kindWS, 7, 2), name), "working set of run r1, interval 2"},
		{keyWords(appendIntervalKey(nil, kindCommit, 7, 2), name), "commit record of run r1, checkpoint 2"},
		{keyWords(appendRunKey(nil, kindRun, 9), name), "the record of run #9 (removed or unnamed)"},
		{keyWords(sequenceKey, name), "the run sequence"},
		{keyWords(appendNameKey(nil, "r1"), name), `the name of run "r1"`},
		{keyWordsAfter(appendBlobKey(nil, 7, 3, 17), name), "frames of run r1, checkpoint 3, after pfn 17"},
		{keyWordsAfter(appendVersionKey(nil, 7, 17, 3), name), "frame versions of run r1, after pfn 17"},
		{keyWords(appendLogKey(nil, 7, 4096), name), "replay log of run r1 at offset 4096"},
		{keyWordsAfter(appendLogKey(nil, 7, 4096), name), "replay log of run r1, after offset 4096"},
		{kindWords(kindLog, "r1"), "replay log of run r1"},
		{recordWords(appendBlobKey(nil, 7, 3, 17), name), "frame of run r1, checkpoint 3, pfn 17"},
		{recordWords(appendVersionKey(nil, 7, 17, 3), name), "frame version of run r1, checkpoint 3, pfn 17"},
		{recordWords(appendPackKey(nil, 7, 3, 2), name), "working-set pack of run r1, checkpoint 3, chunk 2"},
		{kindWords(kindPack, "r1"), "working-set packs of run r1"},
		{kindWords(kindBlob, "r1"), "frames of run r1"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
}
