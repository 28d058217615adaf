// Command vulnfixture calls a symbol with a known vulnerability
// (GO-2022-1059) so that the vulnerability gate can prove it still sees one.
package main

import (
	"fmt"
	"os"

	"golang.org/x/text/language"
)

func main() {
	tags, _, err := language.ParseAcceptLanguage(os.Getenv("ACCEPT_LANGUAGE"))
	fmt.Println(tags, err)
}
