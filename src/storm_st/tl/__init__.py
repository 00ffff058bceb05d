"""storm_st.tl."""
