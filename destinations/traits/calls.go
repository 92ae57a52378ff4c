package traits

// PreviousID returns an alias call's `previousId`: the identity the user
// had before userId.
func PreviousID(m map[string]any) string { return String(m["previousId"]) }

// IP returns the address of the device the event came from,
// `context.ip`.
func IP(m map[string]any) string { return String(Get(m, "context", "ip")) }

// Products returns the products of an ecommerce track call,
// `properties.products`, in order. An entry that is not an object reads as
// a nil map, so that indexes stay those the user sent and an integration
// can name the product it cannot take.
func Products(m map[string]any) []map[string]any {
	list, _ := Get(m, "properties", "products").([]any)
	out := make([]map[string]any, len(list))
	for i, p := range list {
		out[i], _ = p.(map[string]any)
	}
	return out
}

// ProductID returns a product's identifier: `product_id`, else `sku`, as
// the ecommerce spec names them.
func ProductID(p map[string]any) string {
	if id := String(p["product_id"]); id != "" {
		return id
	}
	return String(p["sku"])
}
