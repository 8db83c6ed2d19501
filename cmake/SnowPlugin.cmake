# snow_add_plugin(name [OUTPUT_DIRECTORY dir] sources...)
#
# Builds a snow-core plugin: a shared object `<name>.so` that `snow-core --modules DIR` loads.
# It links SnowCore::snowcore, is compiled with SNOW_BUILDING_PLUGIN (which makes SNOW_MODULE
# emit the plugin descriptor the loader checks) and hides every other symbol, so that plugins
# cannot clash with each other or with the daemon.
#
# Used in-tree and, through the installed SnowCore package, by plugins built out of tree.
function(snow_add_plugin name)
  cmake_parse_arguments(PARSE_ARGV 1 ARG "" "OUTPUT_DIRECTORY" "")
  add_library(${name} MODULE ${ARG_UNPARSED_ARGUMENTS})
  target_link_libraries(${name} PRIVATE SnowCore::snowcore)
  target_compile_definitions(${name} PRIVATE SNOW_BUILDING_PLUGIN)
  set_target_properties(${name} PROPERTIES
    PREFIX ""
    CXX_VISIBILITY_PRESET hidden
    VISIBILITY_INLINES_HIDDEN ON)
  if(ARG_OUTPUT_DIRECTORY)
    set_target_properties(${name} PROPERTIES LIBRARY_OUTPUT_DIRECTORY ${ARG_OUTPUT_DIRECTORY})
  endif()
endfunction()
