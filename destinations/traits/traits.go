// Package traits reads user and event fields out of a decoded event the way
// users actually send them, so that every integration agrees on what "the
// user's name" or "the order's revenue" is, and one fix here reaches all of
// them.
//
// Every function takes the event as event.Event.Fields returns it: a
// map[string]any decoded from the Segment spec JSON, numbers as json.Number.
// Nothing here fails: a field that is missing, empty or of a type that
// cannot mean what is asked for reads as absent ("" or ok == false), since
// an integration cannot do better with a malformed trait than leave it out.
//
// # Where user traits come from
//
// An identify call carries the user's traits in `traits`; every other call
// may carry them in `context.traits`. A group call's own `traits` describe
// the group, not the user, and are never read as user traits. The user
// helpers (Name, Phone, Address, ...) read the first of these that has the
// field: the identify call's `traits`, then `context.traits`.
//
// Email alone also looks in `properties` (between the two), because
// track calls commonly carry it there (an "Order Completed" with the
// buyer's email). Other fields do not: `properties.name` of a track call is
// usually a product's name, not the user's.
package traits

import (
	"encoding/json"
	"math"
	"strconv"
	"strings"
	"time"
)

// Get returns the value at path inside m, following nested objects: Get(m,
// "context", "traits", "email"). It returns nil when any step is missing or
// is not an object.
func Get(m map[string]any, path ...string) any {
	var v any = m
	for _, k := range path {
		obj, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = obj[k]
	}
	return v
}

// Object returns the object at path inside m, nil when it is missing or is
// not an object.
func Object(m map[string]any, path ...string) map[string]any {
	obj, _ := Get(m, path...).(map[string]any)
	return obj
}

// String returns v as a trimmed string: a string as is, a number as written
// (phone numbers and ids are often sent as numbers), "" for anything else,
// booleans and objects included.
func String(v any) string {
	switch s := v.(type) {
	case string:
		return strings.TrimSpace(s)
	case json.Number:
		return s.String()
	case float64:
		return strconv.FormatFloat(s, 'f', -1, 64)
	case int:
		return strconv.Itoa(s)
	case int64:
		return strconv.FormatInt(s, 10)
	}
	return ""
}

// Number returns v as a float64: a JSON number, or a string holding one
// ("19.99", as many clients send prices). ok is false for anything else,
// and for NaN and infinities, which no API accepts.
func Number(v any) (f float64, ok bool) {
	var err error
	switch n := v.(type) {
	case json.Number:
		f, err = n.Float64()
	case string:
		f, err = strconv.ParseFloat(strings.TrimSpace(n), 64)
	case float64:
		f = n
	case int:
		f = float64(n)
	case int64:
		f = float64(n)
	default:
		return 0, false
	}
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		return 0, false
	}
	return f, true
}

// Time returns v as a time: an RFC 3339 string (with or without fractional
// seconds), a date alone ("2006-01-02", read as midnight UTC), or a number
// of seconds since the Unix epoch. A number above 1e11 is read as
// milliseconds: as seconds it would be past the year 5000, and JavaScript's
// Date.now() is the commonest source of numeric timestamps.
func Time(v any) (time.Time, bool) {
	if s, ok := v.(string); ok {
		s = strings.TrimSpace(s)
		for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05", "2006-01-02"} {
			if t, err := time.Parse(layout, s); err == nil {
				return t, true
			}
		}
		return time.Time{}, false
	}
	f, ok := Number(v)
	if !ok || f < 0 || f > 1e15 { // 1e15 ms is in the year 33658
		return time.Time{}, false
	}
	if f > 1e11 {
		return time.UnixMilli(int64(f)).UTC(), true
	}
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(frac*1e9)).UTC(), true
}

// Type returns the event's call type ("track", "identify", ...).
func Type(m map[string]any) string { return String(m["type"]) }

// UserID returns the event's userId, "" when it has none. A numeric id is
// returned as written.
func UserID(m map[string]any) string { return String(m["userId"]) }

// AnonymousID returns the event's anonymousId, "" when it has none.
func AnonymousID(m map[string]any) string { return String(m["anonymousId"]) }

// MessageID returns the event's messageId.
func MessageID(m map[string]any) string { return String(m["messageId"]) }

// EventName returns a track call's event name ("Order Completed"), or the
// name of a page or screen call; "" for other calls.
func EventName(m map[string]any) string {
	switch Type(m) {
	case "track":
		return String(m["event"])
	case "page", "screen":
		return String(m["name"])
	}
	return ""
}

// Properties returns the event's properties, nil when it has none.
func Properties(m map[string]any) map[string]any { return Object(m, "properties") }

// Context returns the event's context, nil when it has none.
func Context(m map[string]any) map[string]any { return Object(m, "context") }

// Traits returns the user's traits as the event carries them: `traits` of
// an identify call, `context.traits` of any other. nil when there are none.
func Traits(m map[string]any) map[string]any {
	if Type(m) == "identify" {
		return Object(m, "traits")
	}
	return Object(m, "context", "traits")
}

// Timestamp returns when the event happened: its `timestamp`, which fanout
// fills in when the client sent none. ok is false when it is missing or
// unreadable.
func Timestamp(m map[string]any) (time.Time, bool) { return Time(m["timestamp"]) }

// userSources lists where user traits are read, in order (see the package
// doc). withProperties puts the event's properties second.
func userSources(m map[string]any, withProperties bool) []map[string]any {
	src := make([]map[string]any, 0, 3)
	if Type(m) == "identify" {
		src = append(src, Object(m, "traits"))
	}
	if withProperties {
		src = append(src, Object(m, "properties"))
	}
	return append(src, Object(m, "context", "traits"))
}

// lookup returns the first non-empty string found under any of keys, in
// the first source that has one.
func lookup(sources []map[string]any, keys ...string) string {
	for _, s := range sources {
		for _, k := range keys {
			if v := String(s[k]); v != "" {
				return v
			}
		}
	}
	return ""
}

// lookupValue returns the first non-nil value under any of keys.
func lookupValue(sources []map[string]any, keys ...string) any {
	for _, s := range sources {
		for _, k := range keys {
			if v, ok := s[k]; ok && v != nil {
				return v
			}
		}
	}
	return nil
}

// Email returns the user's email: from the user's traits, then the event's
// properties, then context.traits.
func Email(m map[string]any) string { return lookup(userSources(m, true), "email") }

// Name returns the user's full name: `name`, or else the first and last
// names joined by a space, camelCase (`firstName`, `lastName`) or
// snake_case (`first_name`, `last_name`), whichever is present. Either half
// alone is returned alone.
func Name(m map[string]any) string {
	for _, s := range userSources(m, false) {
		if n := String(s["name"]); n != "" {
			return n
		}
		first := firstOf(s, "firstName", "first_name")
		last := firstOf(s, "lastName", "last_name")
		if n := strings.TrimSpace(first + " " + last); n != "" {
			return n
		}
	}
	return ""
}

// FirstName returns the user's first name: `firstName` or `first_name`, or
// else the first word of `name`.
func FirstName(m map[string]any) string {
	first, _ := names(m)
	return first
}

// LastName returns the user's last name: `lastName` or `last_name`, or else
// what follows the first word of `name` ("Mary Ann Smith" -> "Ann Smith").
// A one-word name has no last name.
func LastName(m map[string]any) string {
	_, last := names(m)
	return last
}

// names returns the first and last names from the first source that has
// any of them. Explicit halves win over a split of `name`, each on its own,
// so {name: "Ada Lovelace", firstName: "Augusta"} gives Augusta Lovelace.
func names(m map[string]any) (first, last string) {
	for _, s := range userSources(m, false) {
		first = firstOf(s, "firstName", "first_name")
		last = firstOf(s, "lastName", "last_name")
		if full := String(s["name"]); full != "" {
			f, l, _ := strings.Cut(full, " ")
			if first == "" {
				first = f
			}
			if last == "" {
				last = strings.TrimSpace(l)
			}
		}
		if first != "" || last != "" {
			return first, last
		}
	}
	return "", ""
}

// firstOf returns the first non-empty string of s under keys.
func firstOf(s map[string]any, keys ...string) string {
	for _, k := range keys {
		if v := String(s[k]); v != "" {
			return v
		}
	}
	return ""
}

// Phone returns the user's phone number (`phone`), as sent: a number sent
// as a JSON number is returned as its digits.
func Phone(m map[string]any) string { return lookup(userSources(m, false), "phone") }

// Gender returns the user's `gender` as sent.
func Gender(m map[string]any) string { return lookup(userSources(m, false), "gender") }

// Avatar returns the URL of the user's picture (`avatar`).
func Avatar(m map[string]any) string { return lookup(userSources(m, false), "avatar") }

// Website returns the user's website (`website`).
func Website(m map[string]any) string { return lookup(userSources(m, false), "website") }

// Title returns the user's job title (`title`).
func Title(m map[string]any) string { return lookup(userSources(m, false), "title") }

// Username returns the user's `username`.
func Username(m map[string]any) string { return lookup(userSources(m, false), "username") }

// Description returns the user's `description`.
func Description(m map[string]any) string { return lookup(userSources(m, false), "description") }

// Birthday returns the user's `birthday`: a date ("1990-04-01") or an RFC
// 3339 time.
func Birthday(m map[string]any) (time.Time, bool) {
	v := lookupValue(userSources(m, false), "birthday")
	if _, isString := v.(string); !isString {
		// A birthday as a Unix timestamp is too often a mistake (seconds
		// read as milliseconds or the reverse) to be guessed at.
		return time.Time{}, false
	}
	return Time(v)
}

// Age returns the user's `age` in whole years: a number or a string holding
// one. ok is false when it is missing, negative or not a whole number.
func Age(m map[string]any) (int, bool) {
	f, ok := Number(lookupValue(userSources(m, false), "age"))
	if !ok || f < 0 || f != math.Trunc(f) || f > 200 {
		return 0, false
	}
	return int(f), true
}

// CreatedAt returns when the user's account was created: `createdAt` or
// `created_at`, an RFC 3339 time, a date, or Unix seconds or milliseconds
// (see Time).
func CreatedAt(m map[string]any) (time.Time, bool) {
	return Time(lookupValue(userSources(m, false), "createdAt", "created_at"))
}

// Company returns the name of the user's company: `company` as a string,
// or the `name` of `company` as an object ({"company": {"name": "Acme",
// "id": 7}}, as Segment's spec has it).
func Company(m map[string]any) string {
	for _, s := range userSources(m, false) {
		switch c := s["company"].(type) {
		case map[string]any:
			if n := String(c["name"]); n != "" {
				return n
			}
		default:
			if n := String(c); n != "" {
				return n
			}
		}
	}
	return ""
}

// PostalAddress is a postal address. Any field may be empty.
type PostalAddress struct {
	Street     string
	City       string
	State      string
	PostalCode string
	Country    string
}

// IsZero reports whether every field of a is empty.
func (a PostalAddress) IsZero() bool { return a == PostalAddress{} }

// Address returns the user's address: the `address` object (street,
// city, state, postalCode or postal_code or zip, country), each field
// falling back to a top-level trait of the same name, which some clients
// send flat ({"city": "Paris"}).
func Address(m map[string]any) PostalAddress {
	for _, s := range userSources(m, false) {
		obj, _ := s["address"].(map[string]any)
		a := PostalAddress{
			Street:     firstOf(obj, "street"),
			City:       firstOf(obj, "city"),
			State:      firstOf(obj, "state"),
			PostalCode: firstOf(obj, "postalCode", "postal_code", "zip"),
			Country:    firstOf(obj, "country"),
		}
		fill := func(f *string, keys ...string) {
			if *f == "" {
				*f = firstOf(s, keys...)
			}
		}
		fill(&a.Street, "street")
		fill(&a.City, "city")
		fill(&a.State, "state")
		fill(&a.PostalCode, "postalCode", "postal_code", "zip")
		fill(&a.Country, "country")
		if !a.IsZero() {
			return a
		}
	}
	return PostalAddress{}
}

// Revenue returns a track call's `properties.revenue`: a number or a
// string holding one. ok is false for other calls.
func Revenue(m map[string]any) (float64, bool) { return trackNumber(m, "revenue") }

// Value returns a track call's `properties.value`, the event's worth when
// it is not a sale.
func Value(m map[string]any) (float64, bool) { return trackNumber(m, "value") }

// Total returns a track call's `properties.total` (an order's total,
// Segment's ecommerce spec).
func Total(m map[string]any) (float64, bool) { return trackNumber(m, "total") }

// Price returns a track call's `properties.price`.
func Price(m map[string]any) (float64, bool) { return trackNumber(m, "price") }

// Quantity returns a track call's `properties.quantity`.
func Quantity(m map[string]any) (float64, bool) { return trackNumber(m, "quantity") }

// Currency returns a track call's `properties.currency` upper-cased ("usd"
// -> "USD"), "" when absent. Integrations whose API needs one default to
// USD themselves, as Segment's spec does.
func Currency(m map[string]any) string {
	if Type(m) != "track" {
		return ""
	}
	return strings.ToUpper(String(Get(m, "properties", "currency")))
}

func trackNumber(m map[string]any, key string) (float64, bool) {
	if Type(m) != "track" {
		return 0, false
	}
	return Number(Get(m, "properties", key))
}

// Record is the object an integration builds for its API (a contact, a
// lead, a profile), keyed by the API's field names.
type Record map[string]any

// Put sets field k to v unless v is empty: a trait the user did not send
// is left out rather than sent blank, which would erase the API's value.
func (r Record) Put(k, v string) {
	if v != "" {
		r[k] = v
	}
}

// Map copies the traits of m named in mapping (trait name to field name,
// from a setting such as HubSpot's `properties`) into r, as they are. A
// trait that is absent or null is left out.
func (r Record) Map(m map[string]any, mapping map[string]string) {
	t := Traits(m)
	for trait, field := range mapping {
		if v, ok := t[trait]; ok && v != nil {
			r[field] = v
		}
	}
}

// ContactFields names an API's fields for the usual contact traits. A
// field left "" is not filled.
type ContactFields struct {
	Email, FirstName, LastName, Phone, Company, Title, Website string
	// Street, City, State, PostalCode and Country are Address's parts.
	Street, City, State, PostalCode, Country string
	// Birthday is written as YYYY-MM-DD.
	Birthday string
}

// PutContact puts the contact traits of m into r under the names in f,
// leaving out those the user did not send.
func (r Record) PutContact(m map[string]any, f ContactFields) {
	put := func(field, v string) {
		if field != "" {
			r.Put(field, v)
		}
	}
	put(f.Email, Email(m))
	put(f.FirstName, FirstName(m))
	put(f.LastName, LastName(m))
	put(f.Phone, Phone(m))
	put(f.Company, Company(m))
	put(f.Title, Title(m))
	put(f.Website, Website(m))
	if f.Street != "" || f.City != "" || f.State != "" || f.PostalCode != "" || f.Country != "" {
		a := Address(m)
		put(f.Street, a.Street)
		put(f.City, a.City)
		put(f.State, a.State)
		put(f.PostalCode, a.PostalCode)
		put(f.Country, a.Country)
	}
	if f.Birthday != "" {
		if b, ok := Birthday(m); ok {
			r[f.Birthday] = b.Format("2006-01-02")
		}
	}
}
