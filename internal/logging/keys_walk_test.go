package logging

// The source walker behind TestSourceLogKeysAllowlisted. It reads syntax only
// (no type checking, so it needs no build of the module), which makes it
// conservative: anything in a key position that it cannot resolve to a
// constant string is reported. Rules it enforces, for every non-test .go file
// of the module outside vendor/, testdata/, attacks/ and dot/underscore dirs:
//
//   - slog.Debug/Info/Warn/Error(msg, kv...), their …Context forms,
//     slog.Log(ctx, lvl, msg, kv...), slog.With(kv...), and the same method
//     names on any receiver that is not another imported package: each key
//     must be a string literal or a named constant (this package, another
//     package of the module, or slog's own) whose value is a caller key;
//   - slog.String/Int/Int64/Uint64/Float64/Bool/Time/Duration/Any/Group and
//     slog.Attr{Key: …}: the same rule for the key (slog.Group may use "");
//   - .WithGroup on any receiver is reported: the handler drops grouped attrs;
//   - handler-owned keys (time, level, msg, dropped_attrs, source) are
//     reported outside package logging.
//
// In a kv position the walker accepts an inline slog attr constructor, a
// slog.Attr literal, or a call to a module function declared to return
// slog.Attr. An Attr held in a variable reads as a non-constant key: pass
// such values to LogAttrs, whose arguments are attrs rather than keys.
//
// A spread tail (args...) is accepted only if it is a []any{...} literal, a
// call to a "kv helper" of the module, or append(kvHelper(...), more kv...).
// A kv helper is a function or method (matched by name within its package)
// whose result is []any and whose every return is a []any{...} literal; the
// walker checks those literals as key/value lists.

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

const slogPath = "log/slog"

// loggingPkg is this package's import path suffix; reserved keys are allowed
// only there (the handler writes dropped_attrs itself).
const loggingPkg = "internal/logging"

type keyFinding struct {
	Pos token.Position
	Msg string
}

func (f keyFinding) String() string { return fmt.Sprintf("%s: %s", f.Pos, f.Msg) }

type walkFile struct {
	ast     *ast.File
	pkg     string            // import path of the file's package
	imports map[string]string // local name -> import path
}

type kvLit struct {
	file *walkFile
	lit  *ast.CompositeLit
}

type constDef struct {
	expr ast.Expr
	file *walkFile
}

type keyWalker struct {
	fset      *token.FileSet
	modPath   string
	files     []*walkFile
	pkgNames  map[string]string              // import path -> package clause name
	consts    map[string]map[string]constDef // import path -> const name -> definition
	attrFuncs map[string]map[string]bool     // import path -> funcs returning slog.Attr
	kvFuncs   map[string]map[string]bool     // import path -> kv helper funcs and methods
	kvLits    []kvLit                        // their returned literals, checked as kv lists
	findings  []keyFinding
	sites     int // slog call sites and attr constructors checked
}

// skipWalkDir reports whether the module walk ignores directory rel (slash
// separated, relative to the module root). attacks/ is the black-box attack
// client: it is not the relay, may print attack payloads on purpose, and
// imports nothing from internal/.
func skipWalkDir(rel string) bool {
	if rel == "." {
		return false
	}
	base := path.Base(rel)
	switch {
	case base == "vendor", base == "testdata", rel == "attacks":
		return true
	case strings.HasPrefix(base, "."), strings.HasPrefix(base, "_"):
		return true // ignored by the go tool too
	}
	return false
}

// findModuleRoot walks up from dir to the directory holding go.mod and
// returns it with the module path.
func findModuleRoot(dir string) (root, modPath string, err error) {
	for d := dir; ; d = filepath.Dir(d) {
		b, err := os.ReadFile(filepath.Join(d, "go.mod"))
		if err == nil {
			for _, line := range strings.Split(string(b), "\n") {
				if f := strings.Fields(line); len(f) >= 2 && f[0] == "module" {
					p, uerr := strconv.Unquote(f[1])
					if uerr != nil {
						p = f[1]
					}
					return d, p, nil
				}
			}
			return "", "", fmt.Errorf("%s/go.mod has no module line", d)
		}
		if filepath.Dir(d) == d {
			return "", "", fmt.Errorf("no go.mod above %s", dir)
		}
	}
}

// checkModuleDir walks the module rooted at root and checks every non-test
// .go file.
func checkModuleDir(root, modPath string) (*keyWalker, error) {
	srcs := map[string][]byte{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			if skipWalkDir(rel) {
				return filepath.SkipDir
			}
			if rel != "." {
				if _, err := os.Stat(filepath.Join(p, "go.mod")); err == nil {
					return filepath.SkipDir // a nested module is not ours
				}
			}
			return nil
		}
		if !strings.HasSuffix(rel, ".go") || strings.HasSuffix(rel, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		srcs[rel] = b
		return nil
	})
	if err != nil {
		return nil, err
	}
	return checkSources(modPath, srcs)
}

// checkSources checks in-memory sources keyed by slash path relative to the
// module root (the directory gives the package's import path).
func checkSources(modPath string, srcs map[string][]byte) (*keyWalker, error) {
	w := &keyWalker{
		fset:      token.NewFileSet(),
		modPath:   modPath,
		pkgNames:  map[string]string{},
		consts:    map[string]map[string]constDef{},
		attrFuncs: map[string]map[string]bool{},
		kvFuncs:   map[string]map[string]bool{},
	}
	names := make([]string, 0, len(srcs))
	for n := range srcs {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		f, err := parser.ParseFile(w.fset, n, srcs[n], parser.SkipObjectResolution)
		if err != nil {
			return nil, err
		}
		pkg := modPath
		if dir := path.Dir(n); dir != "." {
			pkg = modPath + "/" + dir
		}
		w.files = append(w.files, &walkFile{ast: f, pkg: pkg})
		w.pkgNames[pkg] = f.Name.Name
	}
	for _, wf := range w.files {
		wf.imports = w.importNames(wf.ast)
		w.collectDecls(wf)
	}
	for _, wf := range w.files {
		w.checkFile(wf)
	}
	for _, kl := range w.kvLits {
		w.checkKVList(kl.file, kl.lit.Elts, false)
	}
	return w, nil
}

func (w *keyWalker) importNames(f *ast.File) map[string]string {
	m := map[string]string{}
	for _, is := range f.Imports {
		p, err := strconv.Unquote(is.Path.Value)
		if err != nil {
			continue
		}
		name := path.Base(p)
		if n, ok := w.pkgNames[p]; ok {
			name = n
		}
		if is.Name != nil {
			name = is.Name.Name
		}
		if name == "_" || name == "." {
			continue
		}
		m[name] = p
	}
	return m
}

// collectDecls records every const (package or function scope) and every
// top-level function whose single result is slog.Attr.
func (w *keyWalker) collectDecls(wf *walkFile) {
	if w.consts[wf.pkg] == nil {
		w.consts[wf.pkg] = map[string]constDef{}
		w.attrFuncs[wf.pkg] = map[string]bool{}
		w.kvFuncs[wf.pkg] = map[string]bool{}
	}
	ast.Inspect(wf.ast, func(n ast.Node) bool {
		switch d := n.(type) {
		case *ast.GenDecl:
			if d.Tok != token.CONST {
				return true
			}
			for _, s := range d.Specs {
				vs := s.(*ast.ValueSpec)
				for i, name := range vs.Names {
					if i < len(vs.Values) {
						w.consts[wf.pkg][name.Name] = constDef{expr: vs.Values[i], file: wf}
					}
				}
			}
		case *ast.FuncDecl:
			if d.Recv == nil && d.Type.Results != nil && len(d.Type.Results.List) == 1 &&
				len(d.Type.Results.List[0].Names) <= 1 && w.isSlogSel(wf, d.Type.Results.List[0].Type, "Attr") {
				w.attrFuncs[wf.pkg][d.Name.Name] = true
			}
			if lits, ok := kvHelperLits(d); ok {
				w.kvFuncs[wf.pkg][d.Name.Name] = true
				for _, l := range lits {
					w.kvLits = append(w.kvLits, kvLit{file: wf, lit: l})
				}
			}
		}
		return true
	})
}

// isSlogSel reports whether e is slog.<name> in wf (under any import alias).
func (w *keyWalker) isSlogSel(wf *walkFile, e ast.Expr, name string) bool {
	sel, ok := e.(*ast.SelectorExpr)
	if !ok || sel.Sel.Name != name {
		return false
	}
	id, ok := sel.X.(*ast.Ident)
	return ok && wf.imports[id.Name] == slogPath
}

var (
	// slog attribute constructors whose first argument is a key.
	slogAttrCtors = map[string]bool{
		"String": true, "Int": true, "Int64": true, "Uint64": true, "Float64": true,
		"Bool": true, "Time": true, "Duration": true, "Any": true, "Group": true,
	}
	// Logging calls and the index of their first key/value argument; the
	// same table serves slog's package functions and methods on any receiver.
	// LogAttrs is -1: its tail is attrs, checked where they are constructed.
	slogKVStart = map[string]int{
		"Debug": 1, "Info": 1, "Warn": 1, "Error": 1,
		"DebugContext": 2, "InfoContext": 2, "WarnContext": 2, "ErrorContext": 2,
		"Log": 3, "LogAttrs": -1, "With": 0,
	}
	// slog's exported constant keys, resolvable like module constants.
	slogConstKeys = map[string]string{
		"TimeKey": KeyTime, "LevelKey": KeyLevel, "MessageKey": KeyMsg, "SourceKey": "source",
	}
)

func (w *keyWalker) report(n ast.Node, format string, args ...any) {
	w.findings = append(w.findings, keyFinding{Pos: w.fset.Position(n.Pos()), Msg: fmt.Sprintf(format, args...)})
}

func (w *keyWalker) checkFile(wf *walkFile) {
	ast.Inspect(wf.ast, func(n ast.Node) bool {
		switch x := n.(type) {
		case *ast.CallExpr:
			w.checkCall(wf, x)
		case *ast.CompositeLit:
			if w.isSlogSel(wf, x.Type, "Attr") {
				w.sites++
				w.checkAttrLit(wf, x)
			}
		}
		return true
	})
}

func (w *keyWalker) checkCall(wf *walkFile, call *ast.CallExpr) {
	sel, ok := call.Fun.(*ast.SelectorExpr)
	if !ok {
		return
	}
	name := sel.Sel.Name
	if id, ok := sel.X.(*ast.Ident); ok {
		if p, isPkg := wf.imports[id.Name]; isPkg {
			if p != slogPath {
				return // another package's function, e.g. http.Error
			}
			if slogAttrCtors[name] {
				w.sites++
				if len(call.Args) > 0 {
					w.checkKey(wf, call.Args[0], name == "Group")
				}
				if name == "Group" && len(call.Args) > 1 {
					w.checkKV(wf, call, 1)
				}
				return
			}
			if start, ok := slogKVStart[name]; ok {
				w.sites++
				if start >= 0 {
					w.checkKV(wf, call, start)
				}
			}
			return
		}
	}
	// A method call on some value: a *slog.Logger, or something that wraps one.
	if name == "WithGroup" {
		w.sites++
		w.report(call, "WithGroup: the logging handler drops every grouped attribute")
		return
	}
	if start, ok := slogKVStart[name]; ok && start >= 0 && len(call.Args) > start {
		w.sites++
		w.checkKV(wf, call, start)
	} else if ok && start < 0 {
		w.sites++
	}
}

// checkKV checks the key/value tail of a logging call from index start.
func (w *keyWalker) checkKV(wf *walkFile, call *ast.CallExpr, start int) {
	w.checkKVList(wf, call.Args[start:], call.Ellipsis.IsValid())
}

// checkKVList checks args as alternating keys and values (or whole attrs);
// spread says the last argument is spread with "...".
func (w *keyWalker) checkKVList(wf *walkFile, args []ast.Expr, spread bool) {
	for i := 0; i < len(args); {
		a := args[i]
		if spread && i == len(args)-1 {
			w.checkSpread(wf, a)
			return
		}
		if w.isAttrExpr(wf, a) {
			i++
			continue
		}
		w.checkKey(wf, a, false)
		i += 2
	}
}

// checkSpread checks a spread kv tail: a []any literal, a kv helper call, or
// append of a kv helper call and more key/value pairs.
func (w *keyWalker) checkSpread(wf *walkFile, e ast.Expr) {
	switch x := e.(type) {
	case *ast.CompositeLit:
		if isAnySlice(x.Type) {
			w.checkKVList(wf, x.Elts, false)
			return
		}
	case *ast.CallExpr:
		if id, ok := x.Fun.(*ast.Ident); ok && id.Name == "append" && len(x.Args) > 0 {
			w.checkSpread(wf, x.Args[0])
			w.checkKVList(wf, x.Args[1:], x.Ellipsis.IsValid())
			return
		}
		if w.isKVHelperCall(wf, x) {
			return // its returned literals are checked at the helper
		}
	}
	w.report(e, "spread arguments: keys cannot be checked; use a []any literal, a kv helper returning []any{...}, or LogAttrs")
}

func (w *keyWalker) isKVHelperCall(wf *walkFile, call *ast.CallExpr) bool {
	switch fn := call.Fun.(type) {
	case *ast.Ident:
		return w.kvFuncs[wf.pkg][fn.Name]
	case *ast.SelectorExpr:
		if id, ok := fn.X.(*ast.Ident); ok {
			if p, isPkg := wf.imports[id.Name]; isPkg {
				return w.kvFuncs[p][fn.Sel.Name]
			}
		}
		return w.kvFuncs[wf.pkg][fn.Sel.Name] // a method, matched by name in this package
	}
	return false
}

// kvHelperLits reports whether d returns []any and only ever []any{...}
// literals (or nil), and returns those literals.
func kvHelperLits(d *ast.FuncDecl) ([]*ast.CompositeLit, bool) {
	res := d.Type.Results
	if d.Body == nil || res == nil || len(res.List) != 1 || len(res.List[0].Names) > 1 || !isAnySlice(res.List[0].Type) {
		return nil, false
	}
	var lits []*ast.CompositeLit
	ok := true
	ast.Inspect(d.Body, func(n ast.Node) bool {
		switch x := n.(type) {
		case *ast.FuncLit:
			return false // its returns are not d's
		case *ast.ReturnStmt:
			if len(x.Results) != 1 {
				ok = false
				return false
			}
			switch r := x.Results[0].(type) {
			case *ast.CompositeLit:
				if isAnySlice(r.Type) {
					lits = append(lits, r)
					return false
				}
			case *ast.Ident:
				if r.Name == "nil" {
					return false
				}
			}
			ok = false
			return false
		}
		return true
	})
	return lits, ok && len(lits) > 0
}

// isAnySlice reports whether e is the type []any or []interface{}.
func isAnySlice(e ast.Expr) bool {
	at, ok := e.(*ast.ArrayType)
	if !ok || at.Len != nil {
		return false
	}
	switch elt := at.Elt.(type) {
	case *ast.Ident:
		return elt.Name == "any"
	case *ast.InterfaceType:
		return len(elt.Methods.List) == 0
	}
	return false
}

// isAttrExpr reports whether e evaluates to a slog.Attr as far as syntax can
// tell: a slog constructor call, a slog.Attr literal, or a call to a module
// function declared to return slog.Attr.
func (w *keyWalker) isAttrExpr(wf *walkFile, e ast.Expr) bool {
	switch x := e.(type) {
	case *ast.ParenExpr:
		return w.isAttrExpr(wf, x.X)
	case *ast.CompositeLit:
		return w.isSlogSel(wf, x.Type, "Attr")
	case *ast.CallExpr:
		switch fn := x.Fun.(type) {
		case *ast.Ident:
			return w.attrFuncs[wf.pkg][fn.Name]
		case *ast.SelectorExpr:
			id, ok := fn.X.(*ast.Ident)
			if !ok {
				return false
			}
			p, isPkg := wf.imports[id.Name]
			if !isPkg {
				return false
			}
			if p == slogPath {
				return slogAttrCtors[fn.Sel.Name]
			}
			return w.attrFuncs[p][fn.Sel.Name]
		}
	}
	return false
}

func (w *keyWalker) checkAttrLit(wf *walkFile, lit *ast.CompositeLit) {
	for i, el := range lit.Elts {
		if kv, ok := el.(*ast.KeyValueExpr); ok {
			if id, ok := kv.Key.(*ast.Ident); ok && id.Name == "Key" {
				w.checkKey(wf, kv.Value, false)
				return
			}
			continue
		}
		if i == 0 { // positional slog.Attr{"key", value}
			w.checkKey(wf, el, false)
			return
		}
	}
	w.report(lit, "slog.Attr without a Key")
}

func (w *keyWalker) checkKey(wf *walkFile, e ast.Expr, emptyOK bool) {
	k, ok := w.evalString(wf, e, 0)
	switch {
	case !ok:
		w.report(e, "log key is not a constant string (a key must be a literal or a named constant)")
	case k == "" && emptyOK:
	case isReservedKey(k):
		if !strings.HasSuffix(wf.pkg, "/"+loggingPkg) {
			w.report(e, "log key %q is written by the handler itself and dropped from callers", k)
		}
	case !IsCallerKey(k):
		w.report(e, "log key %q is not in logging.AllowedKeys", k)
	}
}

// evalString resolves e to a constant string: a literal, a named constant
// (this package, another module package, or slog's key constants), string(x)
// or a + b.
func (w *keyWalker) evalString(wf *walkFile, e ast.Expr, depth int) (string, bool) {
	if depth > 32 {
		return "", false
	}
	switch x := e.(type) {
	case *ast.BasicLit:
		if x.Kind != token.STRING {
			return "", false
		}
		s, err := strconv.Unquote(x.Value)
		return s, err == nil
	case *ast.ParenExpr:
		return w.evalString(wf, x.X, depth+1)
	case *ast.Ident:
		if d, ok := w.consts[wf.pkg][x.Name]; ok {
			return w.evalString(d.file, d.expr, depth+1)
		}
	case *ast.SelectorExpr:
		id, ok := x.X.(*ast.Ident)
		if !ok {
			return "", false
		}
		p, isPkg := wf.imports[id.Name]
		if !isPkg {
			return "", false
		}
		if p == slogPath {
			s, ok := slogConstKeys[x.Sel.Name]
			return s, ok
		}
		if d, ok := w.consts[p][x.Sel.Name]; ok {
			return w.evalString(d.file, d.expr, depth+1)
		}
	case *ast.CallExpr:
		if id, ok := x.Fun.(*ast.Ident); ok && id.Name == "string" && len(x.Args) == 1 {
			return w.evalString(wf, x.Args[0], depth+1)
		}
	case *ast.BinaryExpr:
		if x.Op != token.ADD {
			return "", false
		}
		a, ok1 := w.evalString(wf, x.X, depth+1)
		b, ok2 := w.evalString(wf, x.Y, depth+1)
		return a + b, ok1 && ok2
	}
	return "", false
}
