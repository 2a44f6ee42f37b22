package proto

import (
	"bytes"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// protocolDoc is the document a client in another language is written
// from: its examples must be what this package sends and accepts.
const protocolDoc = "../docs/protocol.md"

// methodTypes are each method's params and result types (a notification's
// params only), for the examples' sake; TestProtocolDocExamples checks
// that every method is here.
var methodTypes = map[string][2]reflect.Type{
	MethodHello:        {reflect.TypeFor[HelloParams](), reflect.TypeFor[HelloResult]()},
	MethodAuth:         {reflect.TypeFor[AuthParams](), reflect.TypeFor[AuthResult]()},
	MethodPairBegin:    {reflect.TypeFor[PairBeginParams](), reflect.TypeFor[PairBeginResult]()},
	MethodPairExchange: {reflect.TypeFor[PairExchangeParams](), reflect.TypeFor[PairExchangeResult]()},
	MethodPairConfirm:  {reflect.TypeFor[PairConfirmParams](), reflect.TypeFor[PairConfirmResult]()},
	MethodBoardInfo:    {reflect.TypeFor[BoardInfoParams](), reflect.TypeFor[BoardInfo]()},
	MethodExecStart:    {reflect.TypeFor[ExecStartParams](), reflect.TypeFor[ExecStartResult]()},
	MethodExecWait:     {reflect.TypeFor[ExecWaitParams](), reflect.TypeFor[ExecResult]()},
	MethodExecCancel:   {reflect.TypeFor[ExecCancelParams](), reflect.TypeFor[struct{}]()},
	MethodExecLog:      {reflect.TypeFor[ExecLogParams](), reflect.TypeFor[ExecLogResult]()},
	MethodFileStat:     {reflect.TypeFor[FileStatParams](), reflect.TypeFor[FileInfo]()},
	MethodFilePush:     {reflect.TypeFor[FilePushParams](), reflect.TypeFor[FilePushResult]()},
	MethodFilePull:     {reflect.TypeFor[FilePullParams](), reflect.TypeFor[FilePullResult]()},
	MethodFileWait:     {reflect.TypeFor[FileWaitParams](), reflect.TypeFor[FileResult]()},
	MethodFileDownload: {reflect.TypeFor[FileDownloadParams](), reflect.TypeFor[DownloadResult]()},
	MethodSystemReboot: {reflect.TypeFor[RebootParams](), reflect.TypeFor[RebootResult]()},
	MethodOTAStatus:    {reflect.TypeFor[BoardInfoParams](), reflect.TypeFor[OTAStatus]()},
	MethodOTAPlan:      {reflect.TypeFor[OTAImageParams](), reflect.TypeFor[OTAPlan]()},
	MethodOTAStart:     {reflect.TypeFor[OTAImageParams](), reflect.TypeFor[OTAPlan]()},
	MethodOTAWrite:     {reflect.TypeFor[OTAWriteParams](), reflect.TypeFor[OTAWriteResult]()},
	MethodOTAActivate:  {reflect.TypeFor[OTAActivateParams](), reflect.TypeFor[OTAStatus]()},
	MethodOTACommit:    {reflect.TypeFor[OTAIDParams](), reflect.TypeFor[OTAStatus]()},
	MethodOTARollback:  {reflect.TypeFor[OTARollbackParams](), reflect.TypeFor[OTAStatus]()},
	MethodOTAWait:      {reflect.TypeFor[OTAWaitParams](), reflect.TypeFor[OTAStatus]()},
	MethodOTAAbort:     {reflect.TypeFor[OTAIDParams](), reflect.TypeFor[OTAStatus]()},
	MethodExecResize:   {reflect.TypeFor[ExecResizeParams](), reflect.TypeFor[struct{}]()},
	MethodExecRun:      {reflect.TypeFor[ExecRunParams](), reflect.TypeFor[ExecRunResult]()},
	MethodTCPDial:      {reflect.TypeFor[TCPDialParams](), reflect.TypeFor[TCPDialResult]()},
	MethodTCPListen:    {reflect.TypeFor[TCPListenParams](), reflect.TypeFor[TCPListenResult]()},
	MethodTCPAccept:    {reflect.TypeFor[TCPAcceptParams](), reflect.TypeFor[TCPIncoming]()},
	MethodTCPUnlisten:  {reflect.TypeFor[TCPUnlistenParams](), reflect.TypeFor[struct{}]()},
	NoteProgress:       {reflect.TypeFor[Progress]()},
}

// docTypes are the types a ```json block that holds no JSON-RPC message
// names after "json" in its fence (```json proto.Beacon).
var docTypes = map[string]reflect.Type{
	"proto.Error":  reflect.TypeFor[Error](),
	"proto.Beacon": reflect.TypeFor[Beacon](),
}

// docExample is one JSON example of the document.
type docExample struct {
	line  int          // where it starts, 1-based
	block int          // the fenced block it is in: a transcript
	text  string       // the JSON, as the document has it
	typ   reflect.Type // what it is; nil: a JSON-RPC message
}

func (e docExample) String() string { return fmt.Sprintf("%s:%d", protocolDoc, e.line) }

// key names a message of the example's transcript by its id.
func (e docExample) key(id string) string { return fmt.Sprint(e.block, " ", id) }

// docArrow finds a transcript line's JSON: what follows the arrow (→ or ←,
// alone or as in the serial example's H→A) and an optional "text ", from
// the first '{'. Group 1 is what stands between (a serial frame's type).
var docArrow = regexp.MustCompile(`^\s*[AH]?[→←][AH]?\s+(?:text\s+)?(.*?)(\{.*)$`)

// docID finds a message's id in an example that cannot be decoded.
var docID = regexp.MustCompile(`"id":\s*(-?\d+|"[^"]*")`)

// readDocExamples extracts the examples: every ```json block (one JSON
// value, or transcript lines starting with → or ←, a message running on
// until it is complete), and the → and ← lines of other fenced blocks
// that carry JSON (one message a line; a serial BEACON frame's payload is
// a proto.Beacon). Examples shortened on purpose with … cannot be decoded:
// they are returned in skipped, and only those.
func readDocExamples(t *testing.T) (examples, skipped []docExample) {
	t.Helper()
	doc, err := os.ReadFile(protocolDoc)
	if err != nil {
		t.Fatal(err)
	}
	var (
		inBlock, isJSON bool
		blockType       reflect.Type
		block           int
		open            *docExample // a message of a ```json block still running on
	)
	add := func(e docExample) {
		if strings.Contains(e.text, "…") {
			skipped = append(skipped, e)
		} else {
			examples = append(examples, e)
		}
	}
	for i, line := range strings.Split(string(doc), "\n") {
		if info, ok := strings.CutPrefix(line, "```"); ok {
			if inBlock && open != nil {
				t.Errorf("%s: the example never ends", open)
				open = nil
			}
			inBlock = !inBlock
			if inBlock {
				block++
				words := strings.Fields(info)
				isJSON = len(words) > 0 && words[0] == "json"
				blockType = nil
				if isJSON && len(words) > 1 {
					if blockType = docTypes[words[1]]; blockType == nil {
						t.Errorf("%s:%d: unknown type %q", protocolDoc, i+1, words[1])
					}
				}
			}
			continue
		}
		if !inBlock {
			continue
		}
		e := docExample{line: i + 1, block: block, typ: blockType}
		m := docArrow.FindStringSubmatch(line)
		switch {
		case open != nil:
			open.text += "\n" + line
			if json.Valid([]byte(open.text)) || strings.Contains(open.text, "…") {
				add(*open)
				open = nil
			}
		case isJSON && m != nil:
			e.text = m[2]
			if json.Valid([]byte(e.text)) || strings.Contains(e.text, "…") {
				add(e)
			} else {
				open = &e
			}
		case isJSON && strings.TrimSpace(line) != "":
			e.text = line
			add(e)
		case m != nil:
			e.text = m[2]
			if strings.HasPrefix(m[1], "BEACON") {
				e.typ = reflect.TypeFor[Beacon]()
			}
			add(e)
		}
	}
	return examples, skipped
}

// strictJSON decodes text into a new value of typ, refusing unknown fields,
// and checks that the value encodes back to the same JSON: the document
// shows neither a field the code never sends nor omits one it always
// sends.
func strictJSON(text []byte, typ reflect.Type) error {
	v := reflect.New(typ).Interface()
	dec := json.NewDecoder(bytes.NewReader(text))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("as %s: %w", typ, err)
	}
	again, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("as %s: %w", typ, err)
	}
	var want, got any
	if err := json.Unmarshal(text, &want); err != nil {
		return err
	}
	if err := json.Unmarshal(again, &got); err != nil {
		return err
	}
	if !reflect.DeepEqual(want, got) {
		return fmt.Errorf("as %s, the code sends\n\t%s", typ, again)
	}
	return nil
}

// checkError checks an error object strictly, and that it carries the code
// of its reason and, for invalid_params, the fields it always names.
func checkError(raw []byte) error {
	if err := strictJSON(raw, reflect.TypeFor[Error]()); err != nil {
		return err
	}
	var e Error
	if err := json.Unmarshal(raw, &e); err != nil {
		return err
	}
	switch {
	case e.Data == nil || e.Data.Reason == "":
		return fmt.Errorf("error without data.reason")
	case e.Code != e.Data.Reason.Code():
		return fmt.Errorf("reason %s has code %d, not %d", e.Data.Reason, e.Data.Reason.Code(), e.Code)
	case e.Data.Reason == ReasonInvalidParams && len(e.Data.Fields) == 0:
		return fmt.Errorf("invalid_params without data.fields")
	}
	return nil
}

// sameError reports whether the document's error is the one the code makes.
func sameError(doc, code *Error) error {
	if a, b := mustJSON(doc), mustJSON(code); !bytes.Equal(a, b) {
		return fmt.Errorf("the code answers\n\t%s", b)
	}
	return nil
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // only the test's own values
	}
	return b
}

// docVersion finds the protocol version an example states: hello's params
// and result and board.info say "protocol", the beacon "proto".
var docVersion = regexp.MustCompile(`"(?:protocol|proto)":\s*(-?\d+)`)

// checkVersion checks that an example states the version the document
// describes: its examples are of a client and an agent of this version.
func checkVersion(t *testing.T, ex docExample) {
	t.Helper()
	for _, m := range docVersion.FindAllStringSubmatch(ex.text, -1) {
		if v, _ := strconv.Atoi(m[1]); v != Version {
			t.Errorf("%s: protocol %d in an example of protocol %d", ex, v, Version)
		}
	}
}

// docRequest is a request of a transcript, with its decoded message (nil
// for a request shortened with …).
type docRequest struct {
	ex  docExample
	msg *Message
}

// TestProtocolDocExamples decodes every example of the protocol document
// as the agent and the Go client would: messages with Decode, params with
// DecodeParams into the method's params type, results, errors and other
// values strictly into their types. Where the transcript answers with an
// error that proto makes (a malformed message, invalid params, an unknown
// method), the answer must be proto's.
func TestProtocolDocExamples(t *testing.T) {
	for m := range methodVersions {
		if _, ok := methodTypes[m]; !ok {
			t.Errorf("%s: add its params and result types to methodTypes", m)
		}
	}
	examples, skipped := readDocExamples(t)
	if len(examples) < 40 {
		t.Fatalf("only %d examples found in %s: is the extraction broken?", len(examples), protocolDoc)
	}
	t.Logf("%d examples checked, %d shortened with … skipped", len(examples), len(skipped))

	// The transcripts: requests and answers by block and id.
	requests := map[string]docRequest{}
	answers := map[string]*Message{}
	for _, ex := range skipped {
		t.Logf("%s: shortened with …: not checked", ex)
		if m := docID.FindStringSubmatch(ex.text); m != nil && strings.Contains(ex.text, `"method"`) {
			requests[ex.key(m[1])] = docRequest{ex: ex}
		}
	}
	msgs := make([]*Message, len(examples))
	for i, ex := range examples {
		if ex.typ != nil {
			continue
		}
		m, err := Decode([]byte(ex.text))
		if err != nil {
			continue // checked below: a malformed message on purpose
		}
		msgs[i] = m
		switch key := ex.key(string(m.ID)); m.Kind() {
		case KindRequest:
			if prev, dup := requests[key]; dup {
				t.Errorf("%s: id %s is already the id of %s in the same transcript", ex, m.ID, prev.ex)
				continue
			}
			requests[key] = docRequest{ex, m}
		case KindResponse:
			answers[key] = m
		}
	}

	for i, ex := range examples {
		checkVersion(t, ex)
		m := msgs[i]
		switch {
		case ex.typ == reflect.TypeFor[Error]():
			if err := checkError([]byte(ex.text)); err != nil {
				t.Errorf("%s: %v", ex, err)
			}
		case ex.typ != nil:
			if err := strictJSON([]byte(ex.text), ex.typ); err != nil {
				t.Errorf("%s: %v", ex, err)
			}
		case m == nil:
			checkMalformed(t, ex, examples[i+1:])
		case m.Kind() == KindRequest:
			checkRequest(t, ex, m, answers[ex.key(string(m.ID))])
		case m.Kind() == KindNotification:
			types, ok := methodTypes[m.Method]
			if !ok || types[1] != nil {
				t.Errorf("%s: %q is no notification", ex, m.Method)
			} else if err := strictJSON(m.Params, types[0]); err != nil {
				t.Errorf("%s: %v", ex, err)
			}
		default:
			checkAnswer(t, ex, m, requests[ex.key(string(m.ID))])
		}
	}
}

// checkMalformed checks a message Decode refuses: the next example of its
// transcript answers it, with proto's error.
func checkMalformed(t *testing.T, ex docExample, next []docExample) {
	t.Helper()
	var de *DecodeError
	if _, err := Decode([]byte(ex.text)); !errors.As(err, &de) {
		t.Fatalf("%s: %v", ex, err)
	}
	want := NewErrorResponse(de.ID, de.Err)
	if len(next) == 0 || next[0].block != ex.block {
		t.Errorf("%s: a malformed message without its answer %s", ex, mustJSON(want))
		return
	}
	answer, err := Decode([]byte(next[0].text))
	if err != nil || answer.Kind() != KindResponse || answer.Error == nil || !bytes.Equal(answer.ID, want.ID) {
		t.Errorf("%s: the malformed message before it is answered with %s", next[0], mustJSON(want))
		return
	}
	if err := sameError(answer.Error, de.Err); err != nil {
		t.Errorf("%s: %v", next[0], err)
	}
}

// checkRequest checks a request's params against its method's type, and
// the error it is answered with where proto makes it.
func checkRequest(t *testing.T, ex docExample, m, answer *Message) {
	t.Helper()
	types, known := methodTypes[m.Method]
	if !known {
		if answerReason(answer) != ReasonMethodNotFound {
			t.Errorf("%s: unknown method %q, not answered method_not_found", ex, m.Method)
		}
		return
	}
	perr := DecodeParams(m.Params, reflect.New(types[0]).Interface())
	switch {
	case perr == nil:
		// An invalid_params answer is the agent's own check (a stream
		// that was not opened): checkAnswer sees its fields.
	case answer == nil || answer.Error == nil:
		t.Errorf("%s: %s params: %v", ex, m.Method, perr)
	default:
		if err := sameError(answer.Error, perr); err != nil {
			t.Errorf("%s: the answer to these %s params: %v", ex, m.Method, err)
		}
	}
	if answerReason(answer) == ReasonMethodNotFound {
		if v, _ := MethodVersion(m.Method); v <= MinVersion {
			t.Errorf("%s: %s is served in every version, yet answered method_not_found", ex, m.Method)
		}
	}
}

// answerReason is the reason of an error answer; "" for none or a result.
func answerReason(answer *Message) Reason {
	if answer == nil || answer.Error == nil {
		return ""
	}
	return answer.Error.Reason()
}

// checkAnswer checks a response: an error strictly, a result strictly
// against the result type of the request it answers.
func checkAnswer(t *testing.T, ex docExample, m *Message, req docRequest) {
	t.Helper()
	null := bytes.Equal(m.ID, NullID)
	switch {
	case !null && req.ex.text == "":
		t.Errorf("%s: answers id %s, which no request of its transcript has", ex, m.ID)
		return
	case !null && req.ex.line > ex.line:
		t.Errorf("%s: answers %s, a request that comes after it", ex, req.ex)
	}
	if m.Error != nil {
		var raw struct{ Error json.RawMessage }
		_ = json.Unmarshal([]byte(ex.text), &raw)
		if err := checkError(raw.Error); err != nil {
			t.Errorf("%s: %v", ex, err)
		}
		return
	}
	switch {
	case null:
		t.Errorf("%s: a result answers a request, never id null", ex)
	case req.msg != nil:
		if types, ok := methodTypes[req.msg.Method]; ok {
			if err := strictJSON(m.Result, types[1]); err != nil {
				t.Errorf("%s: %s result %v", ex, req.msg.Method, err)
			}
		}
	}
}

// docToken is the token the document's sessions prove (section 4.2).
const docToken = "s3cret-token-of-board1"

// TestProtocolDocProofs checks the proofs of the document's recorded
// session against the construction section 4 describes, with the standard
// library only: the board's signature, the token's MAC, and the key's
// fingerprint as the document and board.info write it. A client written
// from the document makes the same bytes.
func TestProtocolDocProofs(t *testing.T) {
	examples, _ := readDocExamples(t)
	var (
		hello  HelloParams
		board  HelloResult
		proof  AuthParams
		info   BoardInfo
		helloN = -1
	)
	for i, ex := range examples {
		m, err := Decode([]byte(ex.text))
		if err != nil || ex.typ != nil {
			continue
		}
		switch {
		case m.Method == MethodHello && helloN < 0:
			helloN = i
			mustDecode(t, ex, m.Params, &hello)
		case helloN >= 0 && i == helloN+1:
			mustDecode(t, ex, m.Result, &board)
		case m.Method == MethodAuth && proof.TokenProof == nil:
			mustDecode(t, ex, m.Params, &proof)
		case m.Kind() == KindResponse && bytes.Contains(m.Result, []byte(`"fingerprint"`)) && info.ID == "":
			mustDecode(t, ex, m.Result, &info)
		}
	}
	if board.Auth == nil || proof.TokenProof == nil || info.Fingerprint == "" {
		t.Fatalf("the document must show a hello answered with its challenge (%t), session.auth with a token proof (%t) and board.info with the fingerprint (%t)",
			board.Auth != nil, proof.TokenProof != nil, info.Fingerprint != "")
	}
	der, err := x509.MarshalPKIXPublicKey(ed25519.PublicKey(board.Auth.Key))
	if err != nil {
		t.Fatal(err)
	}
	fp := sha256.Sum256(der)
	transcript := func(label string) []byte {
		return slices.Concat([]byte(label), hello.Nonce, board.Auth.Nonce, fp[:])
	}
	if !ed25519.Verify(board.Auth.Key, transcript("boardlink board proof v1\x00"), board.Auth.Proof) {
		t.Error("the board's proof does not verify")
	}
	mac := hmac.New(sha256.New, []byte(docToken))
	mac.Write(transcript("boardlink token proof v1\x00"))
	if !hmac.Equal(mac.Sum(nil), proof.TokenProof) {
		t.Errorf("the token proof is not the MAC of the session with %q", docToken)
	}
	want := "SHA256:" + base64.RawStdEncoding.EncodeToString(fp[:])
	doc, err := os.ReadFile(protocolDoc)
	if err != nil {
		t.Fatal(err)
	}
	if info.Fingerprint != want || !strings.Contains(string(doc), "fingerprint `"+want+"`") {
		t.Errorf("the key's fingerprint is %s: board.info says %s, and section 4 must name it", want, info.Fingerprint)
	}
}

func mustDecode(t *testing.T, ex docExample, raw json.RawMessage, v any) {
	t.Helper()
	if err := json.Unmarshal(raw, v); err != nil {
		t.Fatalf("%s: %v", ex, err)
	}
}

// TestProtocolDocTables checks the document's tables that restate the
// code: its title's version, the methods with the version that added each
// (section 5), and the version history (section 10).
func TestProtocolDocTables(t *testing.T) {
	b, err := os.ReadFile(protocolDoc)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	if title := fmt.Sprintf("# boardlink wire protocol, version %d\n", Version); !strings.HasPrefix(doc, title) {
		t.Errorf("the title is not %q", title)
	}

	methods := map[string]int{}
	name := regexp.MustCompile("`([a-z.]+)`")
	for _, row := range tableRows(t, section(t, doc, "## 5. Methods"), "| method |") {
		v, err := strconv.Atoi(row[len(row)-1])
		if err != nil {
			t.Errorf("section 5: %v: the last column is the version", row)
		}
		for _, m := range name.FindAllStringSubmatch(row[0], -1) {
			methods[m[1]] = v
		}
	}
	if !maps.Equal(methods, methodVersions) {
		t.Errorf("section 5 lists methods and versions\n\t%v\nthe code has\n\t%v", methods, methodVersions)
	}

	rows := tableRows(t, section(t, doc, "## 10. Version history"), "| version |")
	if len(rows) != len(History) {
		t.Fatalf("section 10 has %d versions, History %d", len(rows), len(History))
	}
	for i, c := range History {
		want := []string{strconv.Itoa(c.Version), c.Date, c.Summary}
		if got := []string{rows[i][0], rows[i][1], strings.ReplaceAll(rows[i][2], "`", "")}; !slices.Equal(got, want) {
			t.Errorf("section 10, version %d:\n\t%q\nHistory has\n\t%q", c.Version, got, want)
		}
	}
}

// section returns the text of the document's section that starts with
// heading, up to the next heading of its level.
func section(t *testing.T, doc, heading string) string {
	t.Helper()
	i := strings.Index(doc, "\n"+heading)
	if i < 0 {
		t.Fatalf("no section %q", heading)
	}
	rest := doc[i+1+len(heading):]
	level := heading[:strings.IndexByte(heading, ' ')+1]
	if j := strings.Index(rest, "\n"+level); j >= 0 {
		rest = rest[:j]
	}
	return rest
}

// tableRows returns the cells of the first table in text whose header
// starts with header, without its header and rule rows.
func tableRows(t *testing.T, text, header string) [][]string {
	t.Helper()
	i := strings.Index(text, header)
	if i < 0 {
		t.Fatalf("no table %q", header)
	}
	var rows [][]string
	for n, line := range strings.Split(text[i:], "\n") {
		if !strings.HasPrefix(line, "|") {
			break
		}
		if n < 2 {
			continue
		}
		cells := strings.Split(strings.Trim(line, "|"), "|")
		for j := range cells {
			cells[j] = strings.TrimSpace(cells[j])
		}
		rows = append(rows, cells)
	}
	return rows
}
