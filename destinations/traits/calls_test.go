package traits

import "testing"

func TestCallFields(t *testing.T) {
	runStrings(t, PreviousID, []stringCase{
		{"alias", `{"type":"alias","userId":"u1","previousId":"a1"}`, "a1"},
		{"number", `{"type":"alias","userId":"u1","previousId":42}`, "42"},
		{"absent", `{"type":"alias","userId":"u1"}`, ""},
	})
	runStrings(t, IP, []stringCase{
		{"context", `{"type":"track","context":{"ip":"203.0.113.7"}}`, "203.0.113.7"},
		{"top level is not it", `{"type":"track","ip":"203.0.113.7"}`, ""},
	})
}

func TestProducts(t *testing.T) {
	m := decode(t, `{"type":"track","event":"Order Completed","properties":{"products":[
		{"product_id":"p1","sku":"s1","price":4.99},{"sku":"s2"},"junk",{"name":"no id"}]}}`)
	got := Products(m)
	if len(got) != 4 || got[2] != nil {
		t.Fatalf("Products: %v", got)
	}
	for i, want := range []string{"p1", "s2", "", ""} {
		if id := ProductID(got[i]); id != want {
			t.Errorf("product %d: ProductID %q, want %q", i, id, want)
		}
	}
	if p, ok := Number(got[0]["price"]); !ok || p != 4.99 {
		t.Errorf("price %v %v", p, ok)
	}
	if got := Products(decode(t, `{"type":"track","properties":{"products":{"a":1}}}`)); len(got) != 0 {
		t.Errorf("products not a list: %v", got)
	}
}
