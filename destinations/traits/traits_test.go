package traits

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
	"time"
)

// decode turns a JSON event into the map Event.Fields returns, numbers as
// json.Number, so that tests see what integrations see.
func decode(t *testing.T, s string) map[string]any {
	t.Helper()
	d := json.NewDecoder(bytes.NewReader([]byte(s)))
	d.UseNumber()
	var m map[string]any
	if err := d.Decode(&m); err != nil {
		t.Fatalf("decode %s: %v", s, err)
	}
	return m
}

// stringCase is one event and what a string helper should read from it.
type stringCase struct {
	name  string
	event string
	want  string
}

func runStrings(t *testing.T, f func(map[string]any) string, cases []stringCase) {
	t.Helper()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := f(decode(t, c.event)); got != c.want {
				t.Errorf("got %q, want %q", got, c.want)
			}
		})
	}
}

func TestName(t *testing.T) {
	runStrings(t, Name, []stringCase{
		{"name", `{"type":"identify","traits":{"name":"Ada Lovelace"}}`, "Ada Lovelace"},
		{"camelCase", `{"type":"identify","traits":{"firstName":"Ada","lastName":"Lovelace"}}`, "Ada Lovelace"},
		{"snake_case", `{"type":"identify","traits":{"first_name":"Ada","last_name":"Lovelace"}}`, "Ada Lovelace"},
		{"mixed cases", `{"type":"identify","traits":{"firstName":"Ada","last_name":"Lovelace"}}`, "Ada Lovelace"},
		{"first only", `{"type":"identify","traits":{"firstName":"Ada"}}`, "Ada"},
		{"last only", `{"type":"identify","traits":{"last_name":"Lovelace"}}`, "Lovelace"},
		{"name wins over halves", `{"type":"identify","traits":{"name":"Ada L.","firstName":"Augusta"}}`, "Ada L."},
		{"trimmed", `{"type":"identify","traits":{"name":"  Ada  "}}`, "Ada"},
		{"context.traits of track", `{"type":"track","context":{"traits":{"name":"Ada"}}}`, "Ada"},
		{"context.traits of identify", `{"type":"identify","traits":{},"context":{"traits":{"first_name":"Ada"}}}`, "Ada"},
		{"identify traits before context", `{"type":"identify","traits":{"name":"A"},"context":{"traits":{"name":"B"}}}`, "A"},
		{"not from properties", `{"type":"track","properties":{"name":"Blue Shirt"}}`, ""},
		{"not from group traits", `{"type":"group","traits":{"name":"Acme Inc"}}`, ""},
		{"wrong type", `{"type":"identify","traits":{"name":true,"firstName":{"x":1}}}`, ""},
		{"empty string", `{"type":"identify","traits":{"name":""}}`, ""},
		{"missing", `{"type":"identify"}`, ""},
		{"traits not an object", `{"type":"identify","traits":"Ada"}`, ""},
	})
}

func TestFirstLastName(t *testing.T) {
	cases := []struct {
		name, event, first, last string
	}{
		{"split name", `{"type":"identify","traits":{"name":"Ada Lovelace"}}`, "Ada", "Lovelace"},
		{"split three words", `{"type":"identify","traits":{"name":"Mary Ann Smith"}}`, "Mary", "Ann Smith"},
		{"one word", `{"type":"identify","traits":{"name":"Cher"}}`, "Cher", ""},
		{"camelCase", `{"type":"identify","traits":{"firstName":"Ada","lastName":"Lovelace"}}`, "Ada", "Lovelace"},
		{"snake_case", `{"type":"identify","traits":{"first_name":"Ada","last_name":"Lovelace"}}`, "Ada", "Lovelace"},
		{"explicit half wins", `{"type":"identify","traits":{"name":"Ada Lovelace","firstName":"Augusta"}}`, "Augusta", "Lovelace"},
		{"context.traits", `{"type":"page","context":{"traits":{"name":"Ada Lovelace"}}}`, "Ada", "Lovelace"},
		{"number is a string", `{"type":"identify","traits":{"firstName":7}}`, "7", ""},
		{"wrong type", `{"type":"identify","traits":{"firstName":["Ada"],"name":false}}`, "", ""},
		{"missing", `{"type":"track"}`, "", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := decode(t, c.event)
			if got := FirstName(m); got != c.first {
				t.Errorf("FirstName = %q, want %q", got, c.first)
			}
			if got := LastName(m); got != c.last {
				t.Errorf("LastName = %q, want %q", got, c.last)
			}
		})
	}
}

func TestEmail(t *testing.T) {
	runStrings(t, Email, []stringCase{
		{"identify traits", `{"type":"identify","traits":{"email":"a@x.io"}}`, "a@x.io"},
		{"track properties", `{"type":"track","properties":{"email":"a@x.io"}}`, "a@x.io"},
		{"context.traits", `{"type":"track","context":{"traits":{"email":"a@x.io"}}}`, "a@x.io"},
		{"traits before properties", `{"type":"identify","traits":{"email":"t@x.io"},"properties":{"email":"p@x.io"}}`, "t@x.io"},
		{"properties before context.traits", `{"type":"track","properties":{"email":"p@x.io"},"context":{"traits":{"email":"c@x.io"}}}`, "p@x.io"},
		{"empty falls through", `{"type":"identify","traits":{"email":""},"context":{"traits":{"email":"c@x.io"}}}`, "c@x.io"},
		{"group traits are not the user's", `{"type":"group","traits":{"email":"billing@acme.io"}}`, ""},
		{"wrong type", `{"type":"identify","traits":{"email":{"work":"a@x.io"}}}`, ""},
		{"missing", `{"type":"identify","traits":{}}`, ""},
	})
}

func TestStringTraits(t *testing.T) {
	t.Run("Phone", func(t *testing.T) {
		runStrings(t, Phone, []stringCase{
			{"string", `{"type":"identify","traits":{"phone":"+1 555 0100"}}`, "+1 555 0100"},
			{"number", `{"type":"identify","traits":{"phone":15550100}}`, "15550100"},
			{"context.traits", `{"type":"track","context":{"traits":{"phone":"555"}}}`, "555"},
			{"wrong type", `{"type":"identify","traits":{"phone":true}}`, ""},
			{"missing", `{"type":"identify"}`, ""},
		})
	})
	t.Run("Gender", func(t *testing.T) {
		runStrings(t, Gender, []stringCase{
			{"string", `{"type":"identify","traits":{"gender":"female"}}`, "female"},
			{"missing", `{"type":"identify","traits":{}}`, ""},
		})
	})
	t.Run("Avatar", func(t *testing.T) {
		runStrings(t, Avatar, []stringCase{
			{"string", `{"type":"identify","traits":{"avatar":"https://x.io/a.png"}}`, "https://x.io/a.png"},
			{"wrong type", `{"type":"identify","traits":{"avatar":{"url":"x"}}}`, ""},
		})
	})
	t.Run("Website", func(t *testing.T) {
		runStrings(t, Website, []stringCase{
			{"string", `{"type":"identify","traits":{"website":"https://ada.dev"}}`, "https://ada.dev"},
			{"context.traits", `{"type":"screen","context":{"traits":{"website":"w"}}}`, "w"},
		})
	})
	t.Run("Title", func(t *testing.T) {
		runStrings(t, Title, []stringCase{
			{"string", `{"type":"identify","traits":{"title":"CTO"}}`, "CTO"},
			{"missing", `{"type":"identify"}`, ""},
		})
	})
	t.Run("Company", func(t *testing.T) {
		runStrings(t, Company, []stringCase{
			{"string", `{"type":"identify","traits":{"company":"Acme"}}`, "Acme"},
			{"object", `{"type":"identify","traits":{"company":{"name":"Acme","id":7}}}`, "Acme"},
			{"object without name", `{"type":"identify","traits":{"company":{"id":7}}}`, ""},
			{"context.traits object", `{"type":"track","context":{"traits":{"company":{"name":"Acme"}}}}`, "Acme"},
			{"wrong type", `{"type":"identify","traits":{"company":["Acme"]}}`, ""},
		})
	})
}

func TestAddress(t *testing.T) {
	cases := []struct {
		name, event string
		want        PostalAddress
	}{
		{"object camelCase", `{"type":"identify","traits":{"address":{"street":"1 Main St","city":"Springfield","state":"IL","postalCode":"62701","country":"US"}}}`,
			PostalAddress{"1 Main St", "Springfield", "IL", "62701", "US"}},
		{"object snake_case", `{"type":"identify","traits":{"address":{"city":"Paris","postal_code":"75001"}}}`,
			PostalAddress{City: "Paris", PostalCode: "75001"}},
		{"zip", `{"type":"identify","traits":{"address":{"zip":90210}}}`, PostalAddress{PostalCode: "90210"}},
		{"flat traits", `{"type":"identify","traits":{"city":"Paris","country":"FR"}}`, PostalAddress{City: "Paris", Country: "FR"}},
		{"object and flat mixed", `{"type":"identify","traits":{"address":{"city":"Lyon"},"country":"FR"}}`, PostalAddress{City: "Lyon", Country: "FR"}},
		{"context.traits", `{"type":"track","context":{"traits":{"address":{"country":"DE"}}}}`, PostalAddress{Country: "DE"}},
		{"address as a string", `{"type":"identify","traits":{"address":"1 Main St"}}`, PostalAddress{}},
		{"wrong field types", `{"type":"identify","traits":{"address":{"city":["Paris"],"state":null}}}`, PostalAddress{}},
		{"missing", `{"type":"identify","traits":{}}`, PostalAddress{}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := Address(decode(t, c.event))
			if got != c.want {
				t.Errorf("got %+v, want %+v", got, c.want)
			}
			if got.IsZero() != (c.want == PostalAddress{}) {
				t.Errorf("IsZero = %v", got.IsZero())
			}
		})
	}
}

func TestAge(t *testing.T) {
	cases := []struct {
		name, event string
		want        int
		ok          bool
	}{
		{"number", `{"type":"identify","traits":{"age":42}}`, 42, true},
		{"string", `{"type":"identify","traits":{"age":"42"}}`, 42, true},
		{"whole float", `{"type":"identify","traits":{"age":42.0}}`, 42, true},
		{"fraction", `{"type":"identify","traits":{"age":42.5}}`, 0, false},
		{"negative", `{"type":"identify","traits":{"age":-1}}`, 0, false},
		{"not a number", `{"type":"identify","traits":{"age":"forty"}}`, 0, false},
		{"wrong type", `{"type":"identify","traits":{"age":true}}`, 0, false},
		{"context.traits", `{"type":"track","context":{"traits":{"age":30}}}`, 30, true},
		{"missing", `{"type":"identify","traits":{}}`, 0, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, ok := Age(decode(t, c.event))
			if got != c.want || ok != c.ok {
				t.Errorf("got %d, %v; want %d, %v", got, ok, c.want, c.ok)
			}
		})
	}
}

// timeCase is one event and the time a helper should read from it; a zero
// want means none.
type timeCase struct {
	name, event string
	want        time.Time
}

func runTimes(t *testing.T, f func(map[string]any) (time.Time, bool), cases []timeCase) {
	t.Helper()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, ok := f(decode(t, c.event))
			if ok != !c.want.IsZero() || !got.Equal(c.want) {
				t.Errorf("got %v, %v; want %v", got, ok, c.want)
			}
		})
	}
}

func TestBirthday(t *testing.T) {
	runTimes(t, Birthday, []timeCase{
		{"date", `{"type":"identify","traits":{"birthday":"1990-04-01"}}`, time.Date(1990, 4, 1, 0, 0, 0, 0, time.UTC)},
		{"RFC 3339", `{"type":"identify","traits":{"birthday":"1990-04-01T00:00:00Z"}}`, time.Date(1990, 4, 1, 0, 0, 0, 0, time.UTC)},
		{"context.traits", `{"type":"track","context":{"traits":{"birthday":"1990-04-01"}}}`, time.Date(1990, 4, 1, 0, 0, 0, 0, time.UTC)},
		{"number refused", `{"type":"identify","traits":{"birthday":638928000}}`, time.Time{}},
		{"unreadable", `{"type":"identify","traits":{"birthday":"April 1st"}}`, time.Time{}},
		{"missing", `{"type":"identify","traits":{}}`, time.Time{}},
	})
}

func TestCreatedAt(t *testing.T) {
	at := time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)
	runTimes(t, CreatedAt, []timeCase{
		{"camelCase", `{"type":"identify","traits":{"createdAt":"2024-05-06T07:08:09Z"}}`, at},
		{"snake_case", `{"type":"identify","traits":{"created_at":"2024-05-06T07:08:09Z"}}`, at},
		{"offset", `{"type":"identify","traits":{"createdAt":"2024-05-06T09:08:09+02:00"}}`, at},
		{"unix seconds", `{"type":"identify","traits":{"createdAt":1714979289}}`, at},
		{"unix milliseconds", `{"type":"identify","traits":{"created_at":1714979289000}}`, at},
		{"context.traits", `{"type":"track","context":{"traits":{"createdAt":"2024-05-06T07:08:09Z"}}}`, at},
		{"wrong type", `{"type":"identify","traits":{"createdAt":true}}`, time.Time{}},
		{"unreadable", `{"type":"identify","traits":{"createdAt":"yesterday"}}`, time.Time{}},
		{"missing", `{"type":"identify"}`, time.Time{}},
	})
}

func TestTimestamp(t *testing.T) {
	runTimes(t, Timestamp, []timeCase{
		{"fractional", `{"timestamp":"2026-01-01T00:00:00.123Z"}`, time.Date(2026, 1, 1, 0, 0, 0, 123e6, time.UTC)},
		{"missing", `{}`, time.Time{}},
		{"wrong type", `{"timestamp":{}}`, time.Time{}},
	})
}

func TestTrackNumbers(t *testing.T) {
	type numberFunc func(map[string]any) (float64, bool)
	cases := []struct {
		name  string
		f     numberFunc
		event string
		want  float64
		ok    bool
	}{
		{"revenue number", Revenue, `{"type":"track","properties":{"revenue":19.99}}`, 19.99, true},
		{"revenue string", Revenue, `{"type":"track","properties":{"revenue":"19.99"}}`, 19.99, true},
		{"revenue zero", Revenue, `{"type":"track","properties":{"revenue":0}}`, 0, true},
		{"revenue wrong type", Revenue, `{"type":"track","properties":{"revenue":{"amount":1}}}`, 0, false},
		{"revenue not a number", Revenue, `{"type":"track","properties":{"revenue":"free"}}`, 0, false},
		{"revenue of identify ignored", Revenue, `{"type":"identify","properties":{"revenue":5}}`, 0, false},
		{"revenue missing", Revenue, `{"type":"track","properties":{}}`, 0, false},
		{"value", Value, `{"type":"track","properties":{"value":3}}`, 3, true},
		{"total", Total, `{"type":"track","properties":{"total":"40.5"}}`, 40.5, true},
		{"price", Price, `{"type":"track","properties":{"price":2}}`, 2, true},
		{"quantity", Quantity, `{"type":"track","properties":{"quantity":4}}`, 4, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, ok := c.f(decode(t, c.event))
			if got != c.want || ok != c.ok {
				t.Errorf("got %v, %v; want %v, %v", got, ok, c.want, c.ok)
			}
		})
	}
}

func TestCurrency(t *testing.T) {
	runStrings(t, Currency, []stringCase{
		{"upper-cased", `{"type":"track","properties":{"currency":"eur"}}`, "EUR"},
		{"missing", `{"type":"track","properties":{}}`, ""},
		{"wrong type", `{"type":"track","properties":{"currency":1}}`, "1"},
		{"not a track", `{"type":"page","properties":{"currency":"EUR"}}`, ""},
	})
}

func TestAccessors(t *testing.T) {
	m := decode(t, `{"type":"track","event":"Order Completed","userId":12345678901234567890,"anonymousId":" a1 ",
		"messageId":"m1","properties":{"k":"v"},"context":{"ip":"1.2.3.4","traits":{"plan":"pro"}}}`)
	if got := UserID(m); got != "12345678901234567890" {
		t.Errorf("UserID = %q: a numeric id must survive as written", got)
	}
	if got := AnonymousID(m); got != "a1" {
		t.Errorf("AnonymousID = %q", got)
	}
	if got := MessageID(m); got != "m1" {
		t.Errorf("MessageID = %q", got)
	}
	if got := EventName(m); got != "Order Completed" {
		t.Errorf("EventName = %q", got)
	}
	if got := Properties(m); got["k"] != "v" {
		t.Errorf("Properties = %v", got)
	}
	if got := Traits(m); got["plan"] != "pro" {
		t.Errorf("Traits of a track = %v, want context.traits", got)
	}
	if got := String(Get(m, "context", "ip")); got != "1.2.3.4" {
		t.Errorf("Get(context, ip) = %q", got)
	}
	if got := Get(m, "context", "ip", "deeper"); got != nil {
		t.Errorf("Get through a string = %v, want nil", got)
	}

	id := decode(t, `{"type":"identify","traits":{"plan":"free"},"context":{"traits":{"plan":"pro"}}}`)
	if got := Traits(id); got["plan"] != "free" {
		t.Errorf("Traits of an identify = %v, want traits", got)
	}
	page := decode(t, `{"type":"page","name":"Pricing"}`)
	if got := EventName(page); got != "Pricing" {
		t.Errorf("EventName of a page = %q", got)
	}
	if got := EventName(decode(t, `{"type":"identify","event":"x"}`)); got != "" {
		t.Errorf("EventName of an identify = %q", got)
	}
	if Properties(decode(t, `{"properties":[1]}`)) != nil {
		t.Error("Properties that are not an object must read as nil")
	}
}

func FuzzTime(f *testing.F) {
	for _, s := range []string{`"2024-05-06T07:08:09Z"`, `1714979289000`, `"1990-04-01"`, `-1`, `1e308`, `"x"`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d := json.NewDecoder(bytes.NewReader([]byte(s)))
		d.UseNumber()
		var v any
		if d.Decode(&v) != nil {
			return
		}
		_, _ = Time(v) // must not panic
	})
}

func TestRecord(t *testing.T) {
	m := map[string]any{"type": "identify", "traits": map[string]any{"plan": "pro", "seats": nil, "email": "a@example.com"}}
	r := Record{}
	r.Put("email", Email(m))
	r.Put("phone", Phone(m))
	r.Map(m, map[string]string{"plan": "Plan__c", "seats": "Seats__c", "missing": "Missing__c"})
	want := Record{"email": "a@example.com", "Plan__c": "pro"}
	if !reflect.DeepEqual(r, want) {
		t.Errorf("Record = %v, want %v: empty and null traits left out", r, want)
	}
}

func TestPutContact(t *testing.T) {
	m := decode(t, `{"type":"identify","traits":{"email":"a@example.com","firstName":"Ada","birthday":"1990-04-05","address":{"city":"Paris","country":"FR"}}}`)
	r := Record{}
	r.PutContact(m, ContactFields{Email: "mail", FirstName: "first", LastName: "last", City: "town", Country: "", Birthday: "dob"})
	want := Record{"mail": "a@example.com", "first": "Ada", "town": "Paris", "dob": "1990-04-05"}
	if !reflect.DeepEqual(r, want) {
		t.Errorf("PutContact = %v, want %v: unnamed fields and missing traits left out", r, want)
	}
}
